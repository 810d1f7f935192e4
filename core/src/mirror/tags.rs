//! Mirrored tag lists: the upstream's, paged as the client asks, cached per
//! page for the tag TTL and served stale when the upstream fails.

use http::{StatusCode, Uri};

use super::{mark, mark_stale, Mirror, MirrorTarget};
use crate::error::UpstreamError;
use crate::error::{ErrorCode, RegistryError};
use crate::io::body::{self, CollectError};
use crate::io::fetch::Fetch;
use crate::io::host::Host;
use crate::io::storage::{PutMode, Storage};
use crate::metrics::{self};
use crate::model::reference::{RepositoryName, Tag};
use crate::store::layout;
use crate::store::Result;
use crate::wire::response::{set, Response};
use crate::wire::{self};

/// Largest upstream tag list page read (Docker Hub answers some
/// repositories with thousands of tags in one page).
pub(super) const TAG_LIST_LIMIT: usize = 16 * 1024 * 1024;

/// One page of a mirrored tag list, as stored.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct TagListCache {
    pub(super) checked_ms: u64,
    pub(super) tags: Vec<String>,
    /// The `n` (if the upstream gave one) and `last` of the next page.
    pub(super) next: Option<(Option<usize>, String)>,
}

/// `n` and `last` from an upstream's `Link: <…?n=…&last=…>; rel="next"`.
pub(super) fn next_page(link: &str) -> Option<(Option<usize>, String)> {
    let inner = link.split_once('<')?.1.split_once('>')?;
    if !inner.1.contains("next") {
        return None;
    }
    let uri: Uri = inner.0.parse().ok()?;
    let last = wire::query_param(&uri, "last")?.ok()?;
    let n = wire::query_param(&uri, "n").and_then(|v| v.ok()?.parse().ok());
    Some((n, last))
}

/// The tag list answer for `requested` (the name as the client wrote it),
/// with a `Link` to the next page through this registry.
pub(super) fn tag_list_response<B>(
    requested: &RepositoryName,
    page: &TagListCache,
    ns: Option<&str>,
) -> Response<B> {
    let body = serde_json::json!({ "name": requested.as_str(), "tags": page.tags });
    let mut resp = crate::wire::response::json_response(StatusCode::OK, body.to_string().into());
    if let Some((n, last)) = &page.next {
        let mut query = Vec::new();
        if let Some(n) = n {
            query.push(format!("n={n}"));
        }
        query.push(format!("last={}", wire::percent_encode(last)));
        if let Some(ns) = ns {
            query.push(format!("ns={}", wire::percent_encode(ns)));
        }
        set(
            resp.headers_mut(),
            http::header::LINK,
            &format!(
                "</v2/{requested}/tags/list?{}>; rel=\"next\"",
                query.join("&")
            ),
        );
    }
    resp
}

impl<S: Storage, H: Host, F: Fetch> Mirror<'_, S, H, F> {
    /// A mirrored repository's tag list: the upstream's, page by page as the
    /// client asks (`n`, `last`), cached per page for the tag TTL and served
    /// stale (up to `max_stale_ms`) when the upstream fails. The answer
    /// names the repository as the client did, whatever the upstream calls
    /// it.
    pub(super) async fn mirror_tags(
        &self,
        t: &MirrorTarget<F, H>,
        requested: &RepositoryName,
        uri: &Uri,
    ) -> Result<Response<S::Body>> {
        let (n, last) = self.store.page_query(uri)?;
        let key = layout::tag_list_cache(&t.local, &layout::tag_list_page(n, last.as_deref()));
        let cached = match self.store.storage.read(&key).await? {
            Some(raw) => serde_json::from_slice::<TagListCache>(&raw).ok(),
            None => None,
        };
        let ns = wire::query_param(uri, "ns").transpose()?;
        let answer = |page: &TagListCache, how: &'static str| {
            let mut resp = tag_list_response(requested, page, ns.as_deref());
            resp = if how == "stale" {
                mark_stale(resp, t)
            } else {
                mark(resp, how)
            };
            resp
        };
        let now = self.store.host.now_unix_ms();
        if let Some(c) = &cached {
            if now.saturating_sub(c.checked_ms) < t.upstream.config.tag_ttl_ms {
                return Ok(answer(c, "hit"));
            }
        }
        let stale_ok =
            |c: &TagListCache| now.saturating_sub(c.checked_ms) <= t.upstream.config.max_stale_ms;
        let fetched = match t.upstream.tags(&t.remote, n, last.as_deref()).await {
            Ok(resp) => self.read_tag_list(t, resp, n, last.as_deref()).await,
            Err(UpstreamError::NotFound) => {
                return Err(RegistryError::new(
                    ErrorCode::NameUnknown,
                    format!("repository {requested} not known upstream"),
                ))
            }
            Err(e) => Err(e),
        };
        match fetched {
            Ok(page) => {
                let json = serde_json::to_vec(&page).expect("tag list serializes");
                self.store
                    .storage
                    .put(&key, json.into(), PutMode::Overwrite)
                    .await?;
                Ok(answer(
                    &page,
                    if cached.is_some() {
                        "revalidated"
                    } else {
                        "miss"
                    },
                ))
            }
            Err(e) => match cached {
                Some(c) if e.allows_stale() && stale_ok(&c) => {
                    metrics::inc(&self.store.metrics.upstream_errors);
                    Ok(answer(&c, "stale"))
                }
                _ => Err(self.upstream_failure(t, e, ErrorCode::NameUnknown)),
            },
        }
    }

    /// The page of tags in an upstream's tag list response, with where its
    /// next page starts.
    pub(super) async fn read_tag_list(
        &self,
        t: &MirrorTarget<F, H>,
        resp: http::Response<F::Body>,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagListCache, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct Wire {
            tags: Option<Vec<String>>,
        }
        let next = wire::header(resp.headers(), "link").and_then(next_page);
        let bytes = body::collect_limited(F::body_stream(resp.into_body()), TAG_LIST_LIMIT)
            .await
            .map_err(|e| match e {
                CollectError::TooLarge => {
                    UpstreamError::Invalid(format!("tag list larger than {TAG_LIST_LIMIT} bytes"))
                }
                CollectError::Io(e) => UpstreamError::unavailable_from("reading the tag list", e),
            })?;
        let wire: Wire = serde_json::from_slice(&bytes).map_err(|e| {
            UpstreamError::Invalid(format!("{} tag list: {e}", t.upstream.config.name))
        })?;
        // Tags that are not valid tags could not be pulled through here.
        // The spec orders tags lexically; some upstreams (distribution 2.8
        // without `n`) send them in storage order.
        let mut tags: Vec<String> = wire
            .tags
            .unwrap_or_default()
            .into_iter()
            .filter(|tag| Tag::parse(tag).is_ok())
            .collect();
        tags.sort();
        // Upstreams without pagination (distribution 2.8) ignore `n` and
        // `last` and send everything: page here.
        let mut next = next;
        if let Some(last) = last {
            tags.retain(|tag| tag.as_str() > last);
        }
        if let Some(n) = n {
            if tags.len() > n {
                tags.truncate(n);
                next = tags.last().map(|l| (Some(n), l.clone()));
            }
        }
        Ok(TagListCache {
            checked_ms: self.store.host.now_unix_ms(),
            tags,
            next,
        })
    }
}
