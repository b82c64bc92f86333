//! Reading the answers of the servers bb2tc calls (TeamCity, Bitbucket) within a limit.

/// The body of `response`, at most `max` bytes; a slow body ends at the client's timeout.
/// The error says what went wrong, without the URL.
pub async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(format!("larger than {max} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err("it did not arrive in time".into()),
            Err(e) => return Err(format!("the connection broke: {}", e.without_url())),
        }
    }
}
