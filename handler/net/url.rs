//! What of a URL may be shown, and its file name. Pure: no network.

/// Strip the query string and user info from a URL before it is logged or shown.
pub fn redact_url(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or("");
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host = authority
                .rsplit_once('@')
                .map(|(_, h)| h)
                .unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => no_query.to_string(),
    }
}

/// The last path segment of a URL, without query or fragment (`artifact` when there is none).
pub fn file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let name = path.rsplit('/').next().unwrap_or("");
    if name.is_empty() || name == "." || name == ".." {
        "artifact".into()
    } else {
        name.to_string()
    }
}

/// The URL's path in lower case, without query string or fragment: what names its file type.
pub fn lower_path(url: &str) -> String {
    url.split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Does this URL name a gzip'd tarball?
pub fn is_tarball(url: &str) -> bool {
    let path = lower_path(url);
    path.ends_with(".tgz") || path.ends_with(".tar.gz")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("https://acct.blob.core.windows.net/c/ofed.tgz?sv=2020&sig=SECRET"),
            "https://acct.blob.core.windows.net/c/ofed.tgz"
        );
        assert_eq!(
            redact_url("http://user:pw@127.0.0.1:3128"),
            "http://127.0.0.1:3128"
        );
        assert_eq!(redact_url("http://u:p@h/a@b?x"), "http://h/a@b");
    }

    #[test]
    fn file_names_come_from_the_last_path_segment() {
        assert_eq!(file_name("https://h/d/ofed.tgz?sig=x#f"), "ofed.tgz");
        assert_eq!(file_name("https://h/"), "artifact");
        assert_eq!(file_name("https://h/d/.."), "artifact");
    }
}
