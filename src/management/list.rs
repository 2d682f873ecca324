//! Listing as RabbitMQ's management plugin lists: `sort` and `sort_reverse` on any (dotted)
//! field, `columns` to keep only some fields, and with `page` the name filter (`name`,
//! `use_regex`) and the paged envelope.

use std::cmp::Ordering;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ApiError, ApiResult, json_ok};

/// The largest page RabbitMQ serves.
const MAX_PAGE_SIZE: u64 = 500;
/// The page size when only `page` is given.
const DEFAULT_PAGE_SIZE: u64 = 100;

/// A listing's query parameters.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    columns: Option<String>,
    sort: Option<String>,
    sort_reverse: Option<String>,
    name: Option<String>,
    use_regex: Option<String>,
    page: Option<String>,
    page_size: Option<String>,
    /// How far back message rate samples go, in seconds.
    pub(crate) msg_rates_age: Option<u64>,
    /// Seconds between message rate samples.
    pub(crate) msg_rates_incr: Option<u64>,
    /// How far back queue length samples go, in seconds.
    pub(crate) lengths_age: Option<u64>,
    /// Seconds between queue length samples.
    pub(crate) lengths_incr: Option<u64>,
    /// How far back data rate samples go, in seconds.
    pub(crate) data_rates_age: Option<u64>,
    /// Seconds between data rate samples.
    pub(crate) data_rates_incr: Option<u64>,
}

/// What a name filter keeps.
enum NameFilter {
    All,
    Substring(String),
    Regex(regex::Regex),
}

impl NameFilter {
    fn keeps(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Substring(s) => name.to_lowercase().contains(s),
            Self::Regex(r) => r.is_match(name),
        }
    }
}

/// A page asked for, with the name filter that comes with it.
struct Paging {
    page: u64,
    size: u64,
    filter: NameFilter,
}

/// The paging a query asks for, if any, checked as RabbitMQ checks it.
fn paging(q: &ListQuery) -> Result<Option<Paging>, ApiError> {
    let Some(page) = q.page.as_deref() else {
        return Ok(None);
    };
    let invalid = || ApiError::bad("Pagination parameters are invalid");
    let page: u64 = page.parse().map_err(|_| invalid())?;
    let size: u64 = match q.page_size.as_deref() {
        Some(s) => s.parse().map_err(|_| invalid())?,
        None => DEFAULT_PAGE_SIZE,
    };
    if page == 0 || size == 0 || size > MAX_PAGE_SIZE {
        return Err(ApiError::Pagination(format!(
            "Invalid pagination parameters: page number {page}, page size {size}"
        )));
    }
    let filter = match (q.name.as_deref(), truthy(q.use_regex.as_deref())) {
        (None | Some(""), _) => NameFilter::All,
        (Some(n), true) => NameFilter::Regex(regex::Regex::new(n).map_err(|_| invalid())?),
        (Some(n), false) => NameFilter::Substring(n.to_lowercase()),
    };
    Ok(Some(Paging { page, size, filter }))
}

/// Answers a listing of JSON items (in their default order): sorted, filtered, paged and cut
/// to the asked columns.
pub(crate) fn respond(items: Vec<Value>, q: &ListQuery) -> ApiResult {
    respond_with(items, value_name, |v| v, q)
}

fn value_name(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or("")
}

/// Answers a listing of `items` (in their default order) as [`respond`] does, making the JSON of
/// an item (`json`) only for those shown unless a sort needs them all: one page of a long
/// listing costs its page.
pub(crate) fn respond_with<T>(
    mut items: Vec<T>,
    name: impl Fn(&T) -> &str,
    json: impl Fn(T) -> Value,
    q: &ListQuery,
) -> ApiResult {
    let paging = paging(q)?;
    if let Some(sort) = q.sort.as_deref().filter(|s| !s.is_empty()) {
        let path: Vec<&str> = sort.split('.').collect();
        let mut values: Vec<Value> = items.into_iter().map(json).collect();
        values.sort_by(|a, b| compare(lookup(a, &path), lookup(b, &path)));
        if truthy(q.sort_reverse.as_deref()) {
            values.reverse();
        }
        return finish(values, paging, value_name, |v| v, q);
    }
    if truthy(q.sort_reverse.as_deref()) {
        items.reverse();
    }
    finish(items, paging, name, json, q)
}

fn finish<T>(
    items: Vec<T>,
    paging: Option<Paging>,
    name: impl Fn(&T) -> &str,
    json: impl Fn(T) -> Value,
    q: &ListQuery,
) -> ApiResult {
    let columns: Option<Vec<Vec<&str>>> = q
        .columns
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| c.split(',').map(|col| col.split('.').collect()).collect());
    let shown = |item: T| {
        let v = json(item);
        match &columns {
            Some(cols) => pick(&v, cols),
            None => v,
        }
    };
    let Some(Paging { page, size, filter }) = paging else {
        return Ok(json_ok(Value::Array(
            items.into_iter().map(shown).collect(),
        )));
    };
    let total = items.len();
    let kept: Vec<T> = items
        .into_iter()
        .filter(|i| filter.keeps(name(i)))
        .collect();
    let filtered = kept.len();
    let start = usize::try_from((page - 1) * size).unwrap_or(usize::MAX);
    let page_items: Vec<Value> = kept
        .into_iter()
        .skip(start)
        .take(usize::try_from(size).unwrap_or(usize::MAX))
        .map(shown)
        .collect();
    Ok(json_ok(json!({
        "filtered_count": filtered,
        "item_count": page_items.len(),
        "items": page_items,
        "page": page,
        "page_count": (filtered as u64).div_ceil(size),
        "page_size": size,
        "total_count": total,
    })))
}

fn truthy(v: Option<&str>) -> bool {
    v == Some("true")
}

fn lookup<'a>(item: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(item, |v, key| v.get(key))
}

/// Orders as RabbitMQ's listings do: missing first, numbers by value, anything else by text.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

/// The fields of `item` that `columns` name; a dotted column keeps its parents (as an empty
/// object where the leaf is missing), an unknown one nothing.
fn pick(item: &Value, columns: &[Vec<&str>]) -> Value {
    let mut out = Map::new();
    for path in columns {
        pick_into(&mut out, item, path);
    }
    Value::Object(out)
}

fn pick_into(out: &mut Map<String, Value>, item: &Value, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(v) = item.get(*first) else {
        return;
    };
    if rest.is_empty() || !v.is_object() {
        out.insert((*first).to_owned(), v.clone());
        return;
    }
    let slot = out
        .entry((*first).to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = slot {
        pick_into(m, v, rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> Vec<Value> {
        ["other", "q1", "q2", "q3"]
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"name": n, "messages": 3 - i, "arguments": {}}))
            .collect()
    }

    fn body(r: ApiResult) -> Value {
        let response = r.expect("a listing");
        let bytes = futures_bytes(response);
        serde_json::from_slice(&bytes).expect("JSON")
    }

    fn futures_bytes(r: axum::response::Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .expect("body")
                .to_vec()
        })
    }

    fn query(text: &str) -> ListQuery {
        serde_json::from_value(
            text.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), Value::from(v)))
                .collect::<Map<_, _>>()
                .into(),
        )
        .expect("a query")
    }

    #[test]
    fn columns_sort_and_pages_as_rabbitmq() {
        let r = body(respond(
            items(),
            &query("columns=name,arguments.x-foo,nope"),
        ));
        assert_eq!(r[1], json!({"name": "q1", "arguments": {}}));
        let r = body(respond(items(), &query("sort=messages&columns=name")));
        assert_eq!(r[0], json!({"name": "q3"}));
        let r = body(respond(
            items(),
            &query("sort=name&sort_reverse=true&columns=name"),
        ));
        assert_eq!(r[0], json!({"name": "q3"}));
        let r = body(respond(items(), &query("page=2&page_size=2&columns=name")));
        assert_eq!(
            r,
            json!({"filtered_count": 4, "item_count": 2, "items": [{"name": "q2"}, {"name": "q3"}],
                   "page": 2, "page_count": 2, "page_size": 2, "total_count": 4})
        );
        let r = body(respond(
            items(),
            &query("name=^q[12]$&use_regex=true&page=1&page_size=1&columns=name"),
        ));
        assert_eq!(
            (r["filtered_count"].clone(), r["page_count"].clone()),
            (json!(2), json!(2))
        );
        let r = body(respond(items(), &query("name=Q&page=1&columns=name")));
        assert_eq!(r["filtered_count"], json!(3));
        assert!(respond(items(), &query("page=0&page_size=2")).is_err());
        assert!(respond(items(), &query("page=1&page_size=501")).is_err());
        assert!(respond(items(), &query("page=abc")).is_err());
    }
}
