//! Streamed answers (tool output, file data): every frame round-trips and a
//! full chunk stays well inside the frame limit.

use nexus_protocol::{Channel, MAX_CHUNK, MAX_FRAME, Reply, ToolInfo, decode, encode};
use proptest::prelude::*;

fn streamed() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (0..3u8, proptest::collection::vec(any::<u8>(), 0..512)).prop_map(|(c, data)| {
            let channel = [Channel::Stdout, Channel::Stderr, Channel::Data][usize::from(c)];
            Reply::Chunk { channel, data }
        }),
        (".{0,64}", any::<u64>(), any::<u32>()).prop_map(|(path, size, mode)| Reply::FileStart {
            path,
            size,
            mode
        }),
        any::<i32>().prop_map(Reply::Exit),
        Just(Reply::Done),
        proptest::collection::vec((".{0,20}", ".{0,40}", any::<bool>()), 0..4).prop_map(|v| {
            Reply::Tools(
                v.into_iter()
                    .map(|(name, description, approve)| ToolInfo {
                        name,
                        description,
                        args: vec!["*".into()],
                        approve,
                    })
                    .collect(),
            )
        }),
    ]
}

proptest! {
    #[test]
    fn streamed_frames_round_trip(r in streamed()) {
        let back: Reply = decode(&encode(&r)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &r);
        let last = matches!(r, Reply::Exit(_) | Reply::Done | Reply::Tools(_));
        prop_assert_eq!(r.is_final(), last);
    }
}

#[test]
fn a_full_chunk_fits_a_frame() {
    let r = Reply::Chunk {
        channel: Channel::Data,
        data: vec![0xff; MAX_CHUNK],
    };
    assert!(encode(&r).len() < MAX_FRAME / 2);
}
