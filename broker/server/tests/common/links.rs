//! A userspace fault proxy between replicas: one TCP forwarder per directed link (member `i`
//! reaching member `j`), each of which a test can cut and heal. Cutting drops the link's open
//! connections and refuses new ones, so a replica can be isolated in one direction or both —
//! what netem would do, without needing it. Loopback only; the forwarders are tasks of the
//! test's runtime and stop with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Link {
    listen: SocketAddr,
    cut: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
}

pub struct Links {
    links: HashMap<(usize, usize), Link>,
    /// Member `j`'s real replication address, set once by [`Links::connect_to`].
    targets: Arc<OnceLock<Vec<SocketAddr>>>,
}

impl Links {
    /// Forwarders for every ordered pair of `members`, listening at once (so the ports the
    /// members then pick for themselves cannot collide with theirs); they forward once
    /// [`Links::connect_to`] names the members' real replication addresses.
    pub async fn start(members: usize) -> Self {
        let targets = Arc::new(OnceLock::new());
        let mut links = HashMap::new();
        for from in 0..members {
            for to in 0..members {
                if from == to {
                    continue;
                }
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a link");
                let listen = listener.local_addr().expect("link address");
                let cut = Arc::new(AtomicBool::new(false));
                let (cuts, _) = watch::channel(0u64);
                let route = Route {
                    to,
                    targets: targets.clone(),
                };
                tokio::spawn(forward(listener, route, cut.clone(), cuts.subscribe()));
                links.insert((from, to), Link { listen, cut, cuts });
            }
        }
        Self { links, targets }
    }

    /// Where the members really listen for replication, by position.
    pub fn connect_to(&self, targets: &[SocketAddr]) {
        let _ = self.targets.set(targets.to_vec());
    }

    /// The address member `from` uses to reach member `to`.
    pub fn address(&self, from: usize, to: usize) -> SocketAddr {
        self.links[&(from, to)].listen
    }

    /// Cuts or heals every link to and from `member`.
    pub fn isolate(&self, member: usize, isolated: bool) {
        self.cut_where(|from, to| from == member || to == member, isolated);
    }

    /// Cuts or heals the links `member` sends on (`outgoing`) or receives on: the others still
    /// reach it but do not hear it, or the other way round.
    pub fn cut_one_way(&self, member: usize, outgoing: bool, cut: bool) {
        self.cut_where(
            |from, to| {
                if outgoing {
                    from == member
                } else {
                    to == member
                }
            },
            cut,
        );
    }

    fn cut_where(&self, chosen: impl Fn(usize, usize) -> bool, cut: bool) {
        for (&(from, to), link) in &self.links {
            if chosen(from, to) {
                link.cut.store(cut, Ordering::SeqCst);
                if cut {
                    link.cuts.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

/// The member a link leads to, resolved when a connection arrives.
struct Route {
    to: usize,
    targets: Arc<OnceLock<Vec<SocketAddr>>>,
}

async fn forward(
    listener: TcpListener,
    route: Route,
    cut: Arc<AtomicBool>,
    cuts: watch::Receiver<u64>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        let target = route.targets.get().map(|t| t[route.to]);
        let Some(target) = target.filter(|_| !cut.load(Ordering::SeqCst)) else {
            drop(inbound);
            continue;
        };
        let mut cuts = cuts.clone();
        cuts.mark_unchanged();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let (mut a_read, mut a_write) = inbound.into_split();
            let (mut b_read, mut b_write) = outbound.into_split();
            tokio::select! {
                _ = tokio::io::copy(&mut a_read, &mut b_write) => {}
                _ = tokio::io::copy(&mut b_read, &mut a_write) => {}
                _ = cuts.changed() => {}
            }
        });
    }
}
