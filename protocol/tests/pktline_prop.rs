//! Property tests of the push command-list reader: no input panics or
//! grows past its limit, and how a request is cut into pieces never
//! changes the answer.

use nexus_protocol::pktline::{Progress, PushCommands, pkt_line};
use proptest::prelude::*;

/// Feeds `data` in the pieces `cuts` makes; the first non-`NeedMore` answer.
fn feed_in_pieces(data: &[u8], cuts: &[usize]) -> Result<Progress, String> {
    let mut r = PushCommands::new();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    points.push(data.len());
    for p in points {
        match r.feed(&data[at..p.max(at)]) {
            Ok(Progress::NeedMore) => at = p.max(at),
            other => return other.map_err(|e| e.to_string()),
        }
    }
    Ok(Progress::NeedMore)
}

fn oid() -> impl Strategy<Value = String> {
    "[0-9a-f]{40}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
        let _ = feed_in_pieces(&data, &cuts);
    }

    #[test]
    fn pieces_do_not_change_the_answer(
        updates in proptest::collection::vec((oid(), oid(), "[a-z]{1,8}(/[a-z0-9-]{1,8}){0,2}"), 1..6),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut data = Vec::new();
        for (i, (old, new, name)) in updates.iter().enumerate() {
            let caps = if i == 0 { "\0report-status side-band-64k" } else { "" };
            data.extend(pkt_line(format!("{old} {new} refs/heads/{name}{caps}\n").as_bytes()));
        }
        data.extend_from_slice(b"0000");
        let list_len = data.len();
        data.extend_from_slice(&tail);
        let whole = feed_in_pieces(&data, &[]);
        let cut = feed_in_pieces(&data, &cuts);
        prop_assert_eq!(&whole, &cut);
        match whole {
            Ok(Progress::Done(c)) => {
                prop_assert_eq!(c.len, list_len);
                prop_assert_eq!(c.updates.len(), updates.len());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
