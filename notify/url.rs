//! The parts of a channel URL that are burrow's: the channel's name in
//! its query, and a password kept out of messages.

use super::NotifyError;

/// Splits `?<key>=NAME` (or `&<key>=NAME`) off a URL's query: the URL
/// without it, and the name (or `default`).
pub(crate) fn split_param(
    url: &str,
    key: &str,
    default: &str,
) -> Result<(String, String), NotifyError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), default.to_string()));
    };
    let mut channel = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix(key).and_then(|p| p.strip_prefix('=')) {
            Some(name) if valid_name(name) => channel = Some(name.to_string()),
            Some(name) => {
                return Err(NotifyError::Config {
                    url: redact(url),
                    reason: format!(
                        "{key} {name:?}: use 1 to 128 letters, digits and . _ - (and no wildcards)"
                    ),
                })
            }
            None => rest.push(pair),
        }
    }
    let base = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((base, channel.unwrap_or_else(|| default.to_string())))
}

fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `url` with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_come_out_of_the_query() {
        assert_eq!(
            split_param("redis://h:1/0", "channel", "d").unwrap(),
            ("redis://h:1/0".into(), "d".into())
        );
        assert_eq!(
            split_param(
                "redis://h:1/0?channel=movies&protocol=resp3",
                "channel",
                "d"
            )
            .unwrap(),
            ("redis://h:1/0?protocol=resp3".into(), "movies".into())
        );
        assert!(split_param("redis://h:1?channel=a*", "channel", "d").is_err());
        assert!(split_param("nats://h:1?subject=", "subject", "d").is_err());
    }

    #[test]
    fn passwords_are_not_repeated() {
        assert_eq!(
            redact("redis://user:secret@h:1/0"),
            "redis://user:***@h:1/0"
        );
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
