//! Command-line options of `iggy-load`.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone)]
pub struct Args {
    pub address: String,
    pub username: String,
    pub password: String,
    pub producers: usize,
    pub consumers: usize,
    pub partitions: u32,
    /// Total batches, split across producers.
    pub batches: usize,
    pub batch_size: usize,
    pub message_size: usize,
    pub consume: bool,
    pub keep: bool,
    pub label: String,
    /// Consumers form a consumer group and let the server pick partitions (Next + auto-commit).
    pub group: bool,
    /// Standalone consumers poll with Next + auto-commit instead of explicit offsets.
    pub commit: bool,
    /// Every message carries a W3C `traceparent` user header (what a traced producer sends),
    /// to measure what following trace context costs the broker.
    pub traceparent: bool,
    /// Waits this long between producing and consuming (so that tiering can move the data to
    /// the object store first, for instance).
    pub consume_after: std::time::Duration,
    /// Consumers run alongside the producers, reading each partition as it grows (an empty
    /// poll means "wait for more"), as consumers keeping up with their producers do.
    pub tail: bool,
    /// Leaves Nagle's algorithm on, as Iggy's SDKs do by default (`nodelay = false`): a
    /// request's header and payload go out as separate writes, like theirs.
    pub nagle: bool,
    /// Every message carries an id of its own, unique across the run (as a producer that
    /// relies on message deduplication sends), instead of 0 (the broker picks one).
    pub ids: bool,
    /// Connects with TLS, trusting the issuer certificate in this PEM file (`--tls-ca`).
    pub tls_ca: Option<std::path::PathBuf>,
    /// The name the broker's certificate must carry (`--tls-domain`, default localhost).
    pub tls_domain: String,
    /// Writes each phase's latencies, one per line in milliseconds, in the order the requests
    /// were sent (per producer, producers one after another), to this path with `.produce` or
    /// `.consume` appended: where in a run the slow requests fall (`--latencies`).
    pub latencies: Option<std::path::PathBuf>,
}

const USAGE: &str = "iggy-load [--address 127.0.0.1:8090] [--username iggy] [--password iggy] \
[--producers 1] [--consumers N] [--partitions 1] [--batches 1000] [--batch-size 1000] \
[--message-size 1000] [--no-consume] [--keep] [--label TEXT] [--group] [--commit] [--traceparent] \
[--consume-after-ms 0] [--tail] [--nagle] [--ids] [--tls-ca FILE] [--tls-domain localhost] \
[--latencies PATH]";

impl Args {
    pub fn parse(mut raw: impl Iterator<Item = String>) -> Result<Self> {
        let mut args = Args {
            address: "127.0.0.1:8090".into(),
            username: "iggy".into(),
            password: "iggy".into(),
            producers: 1,
            consumers: 0,
            partitions: 1,
            batches: 1000,
            batch_size: 1000,
            message_size: 1000,
            consume: true,
            keep: false,
            label: String::new(),
            group: false,
            commit: false,
            traceparent: false,
            consume_after: std::time::Duration::ZERO,
            tail: false,
            nagle: false,
            ids: false,
            tls_ca: None,
            tls_domain: "localhost".into(),
            latencies: None,
        };
        while let Some(flag) = raw.next() {
            let mut value = || {
                raw.next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--address" => args.address = value()?,
                "--username" => args.username = value()?,
                "--password" => args.password = value()?,
                "--producers" => args.producers = value()?.parse()?,
                "--consumers" => args.consumers = value()?.parse()?,
                "--partitions" => args.partitions = value()?.parse()?,
                "--batches" => args.batches = value()?.parse()?,
                "--batch-size" => args.batch_size = value()?.parse()?,
                "--message-size" => args.message_size = value()?.parse()?,
                "--label" => args.label = value()?,
                "--no-consume" => args.consume = false,
                "--keep" => args.keep = true,
                "--group" => args.group = true,
                "--commit" => args.commit = true,
                "--traceparent" => args.traceparent = true,
                "--tail" => args.tail = true,
                "--nagle" => args.nagle = true,
                "--ids" => args.ids = true,
                "--tls-ca" => args.tls_ca = Some(value()?.into()),
                "--tls-domain" => args.tls_domain = value()?,
                "--latencies" => args.latencies = Some(value()?.into()),
                "--consume-after-ms" => {
                    args.consume_after = std::time::Duration::from_millis(value()?.parse()?)
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown option {other}\n{USAGE}"),
            }
        }
        if args.tail && args.group {
            bail!("--tail reads partitions by offset; it does not combine with --group");
        }
        if args.consumers == 0 {
            args.consumers = args.producers;
        }
        if args.producers == 0 || args.partitions == 0 || args.batches == 0 || args.batch_size == 0
        {
            bail!("producers, partitions, batches and batch size must be positive");
        }
        Ok(args)
    }
}
