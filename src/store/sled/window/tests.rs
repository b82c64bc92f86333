use super::*;
use crate::ids::SourceId;

const HOUR: u64 = 3_600_000;

fn record(id: &str, at: u64) -> DeliveryRecord {
    DeliveryRecord {
        id: id.into(),
        source: SourceId::new("dc"),
        event: "repo:refs_changed".into(),
        result: "accepted".into(),
        jobs: 1,
        skipped: Vec::new(),
        received_at: at,
        user: Some("jdoe".into()),
        repository: Some("PROJ/repo".into()),
    }
}

fn change(window: &Window, key: &[u8], seq: u64, at: u64) {
    window
        .add(&[New {
            kind: Kind::Change,
            seq,
            received_at: at,
            key,
            record: &[],
        }])
        .unwrap();
}

/// Two marks with the same 32-bit fingerprint (found by a search over
/// `refs/heads/<hex>` branches; the test checks that they do collide).
fn colliding_keys() -> (Vec<u8>, Vec<u8>) {
    (
        b"dc\0PROJ/repo\0refs/heads/2d8af080a59b459d\0sha".to_vec(),
        b"dc\0PROJ/repo\0refs/heads/34bfdae4ed8b1ee4\0sha".to_vec(),
    )
}

#[test]
fn a_mark_is_seen_exactly_within_the_window_and_a_colliding_key_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let window = Window::open(dir.path()).unwrap();
    let (a, b) = colliding_keys();
    assert_eq!(fingerprint(Kind::Change, &a), fingerprint(Kind::Change, &b));
    change(&window, &a, 1, 10 * HOUR);
    assert!(window.seen_change(&a, 10 * HOUR + 1).unwrap());
    // Same fingerprint, other key: the entry read back says no.
    assert!(!window.seen_change(&b, 10 * HOUR + 1).unwrap());
    // A change mark is not a delivery id.
    assert!(!window.seen(Kind::MarkedDelivery, &a, 10 * HOUR).unwrap());
    // 24 h later it is forgotten.
    assert!(!window.seen_change(&a, 34 * HOUR).unwrap());
    assert!(window.seen_change(&a, 34 * HOUR - 1).unwrap());

    window
        .add_delivery(&record("id-1", 10 * HOUR), true, 2)
        .unwrap();
    window
        .add_delivery(&record("id-2", 10 * HOUR), false, 3)
        .unwrap();
    assert!(window.seen_delivery("id-1", 11 * HOUR).unwrap());
    // Kept for the listing only.
    assert!(!window.seen_delivery("id-2", 11 * HOUR).unwrap());
    assert_eq!(window.max_seq(), 3);
    let listed: Vec<String> = window.recent(10).into_iter().map(|d| d.id).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&"id-1".to_owned()) && listed.contains(&"id-2".to_owned()));
    assert_eq!(
        window.counts(),
        WindowCounts {
            marks: 2,
            deliveries: 2,
            index_bytes: window.counts().index_bytes,
            slices: 1
        }
    );
}

#[test]
fn a_reopened_window_reads_sealed_slices_from_their_index_and_the_newest_from_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let window = Window::open(dir.path()).unwrap();
        // Three slices: 15 minutes apart each.
        for (i, at) in [HOUR, HOUR + SLICE_SPAN_MS, HOUR + 2 * SLICE_SPAN_MS]
            .into_iter()
            .enumerate()
        {
            change(&window, format!("mark-{i}").as_bytes(), i as u64 + 1, at);
            window
                .add_delivery(&record(&format!("id-{i}"), at), true, i as u64 + 1)
                .unwrap();
        }
        assert_eq!(window.counts().slices, 3);
        window.sync().unwrap();
    }
    assert!(idx_path(dir.path(), 1).exists() && idx_path(dir.path(), 2).exists());
    assert!(
        !idx_path(dir.path(), 3).exists(),
        "the newest is not sealed"
    );
    let window = Window::open(dir.path()).unwrap();
    let now = HOUR + 3 * SLICE_SPAN_MS;
    for i in 0..3 {
        assert!(
            window
                .seen_change(format!("mark-{i}").as_bytes(), now)
                .unwrap()
        );
        assert!(window.seen_delivery(&format!("id-{i}"), now).unwrap());
    }
    assert_eq!(window.max_seq(), 3);
    assert_eq!(window.counts().marks, 6);
    let listed: Vec<String> = window.recent(10).into_iter().map(|d| d.id).collect();
    assert_eq!(listed, ["id-2", "id-1", "id-0"]);
    // The newest slice takes entries again.
    change(&window, b"mark-3", 4, now - SLICE_SPAN_MS + 1);
    assert_eq!(window.counts().slices, 3);
}

#[test]
fn a_damaged_index_file_is_rebuilt_from_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let window = Window::open(dir.path()).unwrap();
        change(&window, b"old", 1, HOUR);
        change(&window, b"new", 2, HOUR + SLICE_SPAN_MS);
    }
    let idx = idx_path(dir.path(), 1);
    let mut bytes = std::fs::read(&idx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&idx, bytes).unwrap();
    let window = Window::open(dir.path()).unwrap();
    assert!(window.seen_change(b"old", 2 * HOUR).unwrap());
    assert!(window.seen_change(b"new", 2 * HOUR).unwrap());
}

/// What the applier writes for an accepted delivery: its marks, then its record, in one write.
fn accepted(window: &Window, mark: &[u8], id: &str, seq: u64, at: u64) {
    let bytes = encode(&record(id, at)).unwrap();
    window
        .add(&[
            New {
                kind: Kind::Change,
                seq,
                received_at: at,
                key: mark,
                record: &[],
            },
            New {
                kind: Kind::MarkedDelivery,
                seq,
                received_at: at,
                key: id.as_bytes(),
                record: &bytes,
            },
        ])
        .unwrap();
}

#[test]
fn a_torn_end_is_cut_off_and_what_came_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let window = Window::open(dir.path()).unwrap();
        accepted(&window, b"kept", "d-kept", 1, HOUR);
        accepted(&window, b"torn", "d-torn", 2, HOUR);
        window.sync().unwrap();
    }
    // The last record loses its end; the mark written before it in the same write reads.
    let keys = keys_path(dir.path(), 1);
    let len = std::fs::metadata(&keys).unwrap().len();
    let file = OpenOptions::new().write(true).open(&keys).unwrap();
    file.set_len(len - 5).unwrap();
    drop(file);
    let window = Window::open(dir.path()).unwrap();
    assert!(window.seen_change(b"kept", HOUR).unwrap());
    assert!(window.seen_delivery("d-kept", HOUR).unwrap());
    assert!(!window.seen_delivery("d-torn", HOUR).unwrap());
    // The window holds seq 2 only with its record: the replay adds that delivery again whole.
    assert_eq!(window.max_seq(), 1);
    accepted(&window, b"torn", "d-torn", 2, HOUR);
    drop(window);
    let window = Window::open(dir.path()).unwrap();
    assert!(window.seen_change(b"torn", HOUR).unwrap());
    assert!(window.seen_delivery("d-torn", HOUR).unwrap());
    assert_eq!(window.max_seq(), 2);
}

#[test]
fn slices_older_than_the_window_are_deleted_and_the_newest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let window = Window::open(dir.path()).unwrap();
    change(&window, b"a", 1, HOUR);
    change(&window, b"b", 2, 2 * HOUR);
    change(&window, b"c", 3, 3 * HOUR);
    assert_eq!(window.counts().slices, 3);
    // At 25 h 30 min only the first slice is wholly older than 24 h.
    assert_eq!(window.prune(25 * HOUR + HOUR / 2).unwrap(), 1);
    assert_eq!(window.counts().slices, 2);
    assert!(!keys_path(dir.path(), 1).exists() && !idx_path(dir.path(), 1).exists());
    assert!(window.seen_change(b"b", 25 * HOUR + HOUR / 2).unwrap());
    // Long after, the newest slice stays (it is written to) but answers no.
    assert_eq!(window.prune(100 * HOUR).unwrap(), 1);
    assert_eq!(window.counts().slices, 1);
    assert!(!window.seen_change(b"c", 100 * HOUR).unwrap());
    change(&window, b"d", 4, 100 * HOUR);
    assert!(window.seen_change(b"d", 100 * HOUR).unwrap());
}

#[test]
fn the_listing_keeps_the_newest_records_up_to_its_largest_limit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let window = Window::open(dir.path()).unwrap();
        for i in 0..(RECENT as u64 + 5) {
            window
                .add_delivery(&record(&format!("id-{i}"), HOUR + i), false, 0)
                .unwrap();
        }
        let listed = window.recent(RECENT);
        assert_eq!(listed.len(), RECENT);
        assert_eq!(listed[0].id, format!("id-{}", RECENT + 4));
        assert_eq!(listed[RECENT - 1].id, "id-5");
    }
    let window = Window::open(dir.path()).unwrap();
    let listed = window.recent(3);
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("id-{}", RECENT + 4),
            format!("id-{}", RECENT + 3),
            format!("id-{}", RECENT + 2)
        ]
    );
    assert_eq!(window.recent(RECENT + 10).len(), RECENT);
}
