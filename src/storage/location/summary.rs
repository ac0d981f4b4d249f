//! What statuses and events may say of a failed storage request.

/// A short, stable description of a failed storage request for statuses and events: its kind
/// and HTTP status, never the store's response body (which may echo request details) nor
/// anything else it said.
pub(super) fn summary(e: &object_store::Error) -> String {
    use std::error::Error as _;
    let kind = match e {
        object_store::Error::PermissionDenied { .. } => Some("permission denied".to_string()),
        object_store::Error::Unauthenticated { .. } => {
            Some("authentication failed: check the credentials".to_string())
        }
        object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => {
            Some("operation not supported by this store".to_string())
        }
        object_store::Error::InvalidPath { .. } => Some("invalid object path".to_string()),
        object_store::Error::NotModified { .. } => Some("not modified".to_string()),
        _ => None,
    };
    let mut status = None;
    let mut http = None;
    let mut io = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<object_store::client::HttpError>() {
            http = Some(h.kind());
        }
        if let Some(i) = s.downcast_ref::<std::io::Error>() {
            io = Some(i.kind());
        }
        // The retry error's text is the one place the status is said: "status code: 403 ...".
        if status.is_none()
            && let Some(rest) = s.to_string().split("status code: ").nth(1)
            && let Some(code) = rest
                .get(..3)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        {
            status = Some(code.to_string());
        }
        source = s.source();
    }
    let http = http.map(|k| {
        use object_store::client::HttpErrorKind as K;
        match k {
            K::Connect => "cannot connect to the endpoint",
            K::Timeout => "the request timed out",
            K::Interrupted => "the request was interrupted",
            K::Decode => "the response could not be read",
            _ => "the request failed",
        }
        .to_string()
    });
    let io = io.map(|k| format!("I/O error: {k}"));
    let status = status.map(|c| match c.as_str() {
        "401" => "HTTP 401 (authentication failed: check the credentials)".to_string(),
        "403" => {
            "HTTP 403 (access denied: check the credentials and their permissions)".to_string()
        }
        "404" => "HTTP 404 (no such bucket or container)".to_string(),
        _ => format!("HTTP {c}"),
    });
    match (kind, status) {
        // The status says what the kind would, and more precisely.
        (_, Some(s)) => s,
        (Some(k), None) => k,
        (None, None) => http
            .or(io)
            .unwrap_or_else(|| "the storage request failed (details in the log)".to_string()),
    }
}
