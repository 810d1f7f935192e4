//! The core's own blob fill, behind `Registry::handle`: the claim's
//! decision carried out as a task of the host's, the upstream's body read
//! into a spool, nothing visible under the digest until its bytes verified.

use std::sync::Arc;

use futures::future::{self, Either};
use futures::StreamExt;
use http::StatusCode;

use super::claim::{Elsewhere, FillLease, FollowEnd};
use super::flight::FlightError;
use super::spool::{Spool, SpoolTarget};
use super::upstream::Upstream;
use crate::config::BODY_IDLE_MIN_BYTES;
use crate::io::body::ByteStream;
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::Storage;
use crate::model::digest::Digest;
use crate::model::reference::RepositoryName;
use crate::store::layout;
use crate::wire::{self};

/// The core's own run of a fill, for hosts that leave moving the bytes to
/// it (`Registry::handle`): it carries out what `claim_fill` decided, as a
/// task of the host's. The lead reads the upstream's body into a
/// [`Spool`]; the first request of a process that finds another process
/// filling follows that fill's spool (and takes the fill over if it dies).
/// Which blob, for which repository, is the lease's.
pub(super) struct Fill<S, F, H> {
    pub(super) storage: Arc<S>,
    pub(super) upstream: Arc<Upstream<F, H>>,
    /// The repository as the upstream names it.
    pub(super) remote: RepositoryName,
    /// Record the fill for eviction passes (`RegistryConfig::records_changes`).
    pub(super) records_changes: bool,
}

impl<S: Storage, F: Fetch, H: Host> Fill<S, F, H> {
    /// Fill under `lease`, then settle it.
    pub(super) async fn lead(self, lease: FillLease<S, H>) {
        let outcome = lease.hold(self.fill(&lease)).await;
        // Tidy up before anyone hears how the fill ended: a client that saw
        // it fail finds nothing of it left. (Clients still reading spooled
        // chunks wait for the outcome, then read the stored blob.)
        if let Ok(keys) = self.storage.list(&layout::upload_dir(&lease.spool)).await {
            for k in keys {
                let _ = self.storage.delete(&k).await;
            }
        }
        lease.settle_flight(outcome).await;
    }

    /// Follow another process's fill: its spool feeds this process's
    /// clients. If its holder dies, or gives up before its first byte,
    /// this process fills instead.
    pub(super) async fn follow(self, e: Elsewhere<S, H>) {
        match e.follow().await {
            FollowEnd::Over { outcome, here } => here.settle_flight(outcome).await,
            FollowEnd::Lead(lease) => self.lead(lease).await,
        }
    }

    /// Fill from the upstream into this process's spool, telling followers
    /// elsewhere (through `lease`) when the upstream answered and when
    /// every byte hashed right. A body that breaks off is asked for again
    /// from where it stopped (`Range: bytes=N-`, at most `MAX_RESUMES`
    /// times), the hash carried on over the new bytes: followers see one
    /// unbroken blob.
    async fn fill(&self, lease: &FillLease<S, H>) -> Result<(), FlightError> {
        let (local, digest) = &lease.key;
        let resp = self
            .upstream
            .blob(&self.remote, &digest.to_string(), None)
            .await
            .map_err(FlightError::Upstream)?;
        let size = wire::header(resp.headers(), "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let target = SpoolTarget {
            storage: self.storage.clone(),
            host: lease.host.clone(),
            local: local.clone(),
            digest: digest.clone(),
            id: lease.spool.clone(),
            flight: lease.flight.clone(),
            metrics: lease.metrics.clone(),
            records_changes: self.records_changes,
            source: format!("upstream {}", self.upstream.config.name),
        };
        let mut spool = Spool::begin(target, size).await?;
        // Followers elsewhere answer their clients, from the spool, from
        // here on.
        lease.spooling();
        lease.renew_now().await;
        let mut body = F::body_stream(resp.into_body());
        let mut skip = 0;
        let mut resumes = 0;
        loop {
            match self.read(&mut spool, body, skip, &*lease.host).await {
                Ok(()) => break,
                Err(Broke::Fatal(e)) => return Err(e),
                // Every byte is in: the digest decides.
                Err(Broke::Cut(_)) if size.is_some_and(|s| spool.received() >= s) => break,
                Err(Broke::Cut(e)) if resumes >= MAX_RESUMES => {
                    return Err(spool.body_failed(&format!("{e} (resumed {resumes} times)")))
                }
                Err(Broke::Cut(e)) => {
                    resumes += 1;
                    (body, skip) = self.resume(&spool, digest, &e, &*lease.host).await?;
                }
            }
        }
        spool.verify().await?;
        // Joining parts into the blob can take a while on S3: followers
        // elsewhere may serve the last byte meanwhile.
        lease.renew_now().await;
        spool.commit().await
    }

    /// Read `body` into the spool to its end, dropping its first `skip`
    /// bytes (ones the spool has: an upstream that answered a `Range` with
    /// the whole blob). Gives up on a body that delivers less than
    /// `BODY_IDLE_MIN_BYTES` in an idle timeout: a stalled or dripping
    /// upstream holds every client of the fill, and asking it again would
    /// only hold them longer.
    async fn read(
        &self,
        spool: &mut Spool<S, H>,
        mut body: ByteStream,
        mut skip: u64,
        host: &H,
    ) -> Result<(), Broke> {
        let idle_ms = self.upstream.config.body_idle_timeout_ms;
        // Bytes that came (kept or skipped) since the window opened.
        let mut moved = 0u64;
        let mut window = (idle_ms > 0).then(|| host.sleep(idle_ms));
        loop {
            let next = match window.as_mut() {
                None => Either::Left((body.next().await, ())),
                Some(w) => match future::select(body.next(), w).await {
                    Either::Left((item, _)) => Either::Left((item, ())),
                    Either::Right(((), _)) => Either::Right(()),
                },
            };
            let chunk = match next {
                Either::Left((Some(Ok(chunk)), ())) => chunk,
                Either::Left((Some(Err(e)), ())) => return Err(Broke::Cut(e.to_string())),
                Either::Left((None, ())) => return Ok(()),
                Either::Right(()) => {
                    if moved < BODY_IDLE_MIN_BYTES {
                        return Err(Broke::Fatal(spool.broken(format!(
                            "{moved} bytes in {idle_ms} ms after {} bytes, under \
                             {BODY_IDLE_MIN_BYTES} (body_idle_timeout_secs); \
                             given up as stalled",
                            spool.received()
                        ))));
                    }
                    moved = 0;
                    window = Some(host.sleep(idle_ms));
                    continue;
                }
            };
            moved += chunk.len() as u64;
            let chunk = if skip >= chunk.len() as u64 {
                skip -= chunk.len() as u64;
                continue;
            } else {
                let rest = chunk.slice(skip as usize..);
                skip = 0;
                rest
            };
            spool.write(chunk).await.map_err(Broke::Fatal)?;
        }
    }

    /// Ask the upstream again for the bytes after those the spool has,
    /// after the body broke off with `cause`: the new body, and how many
    /// of its first bytes to drop. A `206` must start where the spool
    /// stopped; a `200` (the upstream ignored the `Range`) sends every
    /// byte again, and those the spool has are skipped. Either way the
    /// digest covers every byte kept.
    async fn resume(
        &self,
        spool: &Spool<S, H>,
        digest: &Digest,
        cause: &str,
        host: &H,
    ) -> Result<(ByteStream, u64), FlightError> {
        let from = spool.received();
        let range = (from > 0).then(|| format!("bytes={from}-"));
        host.warn(&format!(
            "upstream {}: blob {digest} broke off after {from} bytes ({cause}); asking again{}",
            self.upstream.config.name,
            range
                .as_deref()
                .map(|r| format!(" with Range: {r}"))
                .unwrap_or_default(),
        ));
        let resp = self
            .upstream
            .blob(&self.remote, &digest.to_string(), range)
            .await
            .map_err(FlightError::Upstream)?;
        if from == 0 || resp.status() != StatusCode::PARTIAL_CONTENT {
            return Ok((F::body_stream(resp.into_body()), from));
        }
        let answered = wire::header(resp.headers(), "content-range").map(str::to_owned);
        match answered.as_deref().and_then(wire::parse_content_range) {
            Some((start, end))
                if start == from && spool.size().is_none_or(|s| end.checked_add(1) == Some(s)) =>
            {
                Ok((F::body_stream(resp.into_body()), 0))
            }
            _ => Err(spool.broken(format!(
                "asked for bytes={from}-, the upstream answered Content-Range {answered:?}"
            ))),
        }
    }
}

/// How many times one fill asks the upstream again, with `Range:
/// bytes=N-`, after its body broke off. Every resume counts, whatever it
/// brought: an upstream that cuts every connection after a few bytes
/// cannot hold a fill (and its clients) for long.
pub(super) const MAX_RESUMES: u32 = 5;

/// How a body ended before its end.
enum Broke {
    /// The connection failed: worth asking again from where it stopped.
    Cut(String),
    /// Not worth asking again: storage refused the bytes, the upstream sent
    /// more than it announced, or the body went idle.
    Fatal(FlightError),
}
