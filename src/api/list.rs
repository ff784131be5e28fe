//! Lists in Image Streamer's shape: `?start=&count=&filter=&sort=` in (`filter` may
//! repeat), `{type, uri, category, members, count, total, start, prevPageUri,
//! nextPageUri}` out, page URIs keeping the filter and sort.

use axum::extract::RawQuery;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::catalog::{ListQuery, Page};

/// The query string's list parameters, as given (to rebuild page URIs).
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub query: ListQuery,
    filters: Vec<String>,
    sort: Option<String>,
}

impl ListParams {
    pub fn from_raw(RawQuery(q): RawQuery) -> Result<ListParams, ApiError> {
        let q = q.unwrap_or_default();
        let (mut start, mut count, mut sort) = (None, None, None);
        let mut filters = Vec::new();
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            match k.as_ref() {
                "start" => start = Some(v.into_owned()),
                "count" => count = Some(v.into_owned()),
                "filter" => filters.push(v.into_owned()),
                "sort" => sort = Some(v.into_owned()),
                // query, view, fields, scopeUris...: not interpreted.
                _ => {}
            }
        }
        let query = ListQuery::parse(
            start.as_deref(),
            count.as_deref(),
            &filters,
            sort.as_deref(),
        )
        .map_err(|e| ApiError::bad_request("INVALID_QUERY", e.to_string()))?;
        Ok(ListParams {
            query,
            filters,
            sort,
        })
    }

    fn page_uri(&self, base: &str, start: usize, count: usize) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.append_pair("start", &start.to_string());
        s.append_pair("count", &count.to_string());
        for f in &self.filters {
            s.append_pair("filter", f);
        }
        if let Some(o) = &self.sort {
            s.append_pair("sort", o);
        }
        format!("{base}?{}", s.finish())
    }

    /// The list response for `page` of the collection at `base` (`/rest/plan-scripts`).
    pub fn respond(&self, base: &str, kind_type: &str, category: &str, page: Page) -> Value {
        let n = page.members.len();
        let per = self.query.count.unwrap_or(n.max(1));
        let next = (self.query.count.is_some() && page.start + n < page.total)
            .then(|| self.page_uri(base, page.start + n, per));
        let prev = (page.start > 0 && per > 0)
            .then(|| self.page_uri(base, page.start.saturating_sub(per), per));
        json!({
            "type": kind_type,
            "uri": self.page_uri(base, page.start, per),
            "category": category,
            "eTag": null,
            "created": null,
            "modified": null,
            "members": page.members,
            "count": n,
            "total": page.total,
            "start": page.start,
            "prevPageUri": prev,
            "nextPageUri": next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> ListParams {
        ListParams::from_raw(RawQuery(Some(q.into()))).unwrap()
    }

    #[test]
    fn pages_link_to_each_other_keeping_the_filter() {
        let p = params("start=2&count=2&filter=%22name%3D%27x%27%22&sort=name:asc");
        let page = Page {
            members: vec![json!({}), json!({})],
            total: 5,
            start: 2,
        };
        let v = p.respond("/rest/plan-scripts", "T", "plan-scripts", page);
        assert_eq!(v["count"], 2);
        assert_eq!(v["total"], 5);
        let next = v["nextPageUri"].as_str().unwrap();
        assert!(
            next.starts_with("/rest/plan-scripts?start=4&count=2&filter="),
            "{next}"
        );
        assert!(next.contains("sort=name%3Aasc"), "{next}");
        assert!(v["prevPageUri"].as_str().unwrap().contains("start=0"));
        let last = p.respond(
            "/rest/plan-scripts",
            "T",
            "c",
            Page {
                members: vec![json!({})],
                total: 5,
                start: 4,
            },
        );
        assert!(last["nextPageUri"].is_null());
    }

    #[test]
    fn bad_parameters_are_400() {
        let e = ListParams::from_raw(RawQuery(Some("count=lots".into()))).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        let e = ListParams::from_raw(RawQuery(Some("filter=name%20%27x%27".into()))).unwrap_err();
        assert!(e.message.contains("operator"), "{}", e.message);
    }
}
