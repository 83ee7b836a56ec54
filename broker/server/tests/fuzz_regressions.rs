//! Every input in `fuzz/regressions/` — each one a crash the fuzzer once found, or a seed that
//! reaches a deep path — replayed through the fuzz harness on every `make test`.

use broker::fuzzing::{encode_ops, replay, Harness, Op};

#[test]
fn every_saved_fuzz_input_still_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .expect("fuzz/regressions exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the regression corpus is empty");
    let harness = Harness::new();
    for input in inputs {
        let data = std::fs::read(&input).expect("readable input");
        replay(&harness, &data);
    }
}

#[test]
fn a_scripted_session_through_the_harness_answers_every_request() {
    let harness = Harness::new();
    let ops = vec![
        Op::CreateStream { name: "s".into() },
        Op::CreateTopic {
            stream: 0,
            partitions: 2,
            name: "t".into(),
            expiry: 0,
            max_size: 0,
        },
        Op::Send {
            stream: 0,
            topic: 0,
            partitioning: 0,
            key: vec![],
            messages: vec![(0, b"a".to_vec(), vec![]); 3],
            flip: None,
        },
        Op::Send {
            stream: 0,
            topic: 0,
            partitioning: 1,
            key: vec![],
            messages: vec![(0, b"b".to_vec(), vec![])],
            flip: Some((30, 0xFF)),
        },
        Op::Poll {
            group: false,
            consumer: 1,
            stream: 0,
            topic: 0,
            partition: Some(0),
            strategy: 2,
            value: 0,
            count: 10,
            auto_commit: true,
        },
        Op::GroupOp {
            command: 0,
            stream: 0,
            topic: 0,
            group: 0,
            name: "g".into(),
        },
        Op::GroupOp {
            command: 1,
            stream: 0,
            topic: 0,
            group: 0,
            name: String::new(),
        },
        Op::Poll {
            group: true,
            consumer: 0,
            stream: 0,
            topic: 0,
            partition: None,
            strategy: 4,
            value: 0,
            count: 10,
            auto_commit: true,
        },
        Op::Raw {
            code: 9999,
            payload: vec![1, 2, 3],
        },
        Op::Tear { cut: 3 },
    ];
    let stream = encode_ops(&ops);
    // Nine frames; the tear cuts into the last (the raw one), which is left unanswered.
    assert_eq!(harness.run(&stream, true), 8);
}
