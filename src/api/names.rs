//! Names that become label values. Kubernetes allows object names of up to 253 characters but
//! label values of at most 63, so a name the operator writes into a label (a Failover's into
//! `siterecovery.io/failover`, a ReplicatedWorkload's into `siterecovery.io/replicated-workload`
//! and `siterecovery.io/holds-for`) is checked once, up front, and a name that cannot be one is
//! an `InvalidSpec` rather than a create that the API server refuses at every retry.

/// The longest label value Kubernetes accepts.
pub const MAX_LABEL_VALUE: usize = 63;

/// Why `value` cannot be a label value, naming `field` and what is expected; `None` when it can.
pub fn label_value_problem(field: &str, value: &str, label: &str) -> Option<String> {
    let syntax = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let ends = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if value.len() > MAX_LABEL_VALUE {
        Some(format!(
            "{field}: {value:?} has {} characters; it becomes the value of label {label}, which may have at most {MAX_LABEL_VALUE}: use a shorter name",
            value.len()
        ))
    } else if !value.chars().all(syntax)
        || !ends(value.chars().next())
        || !ends(value.chars().last())
    {
        Some(format!(
            "{field}: {value:?} is not a label value (letters, digits, '-', '_' and '.', starting and ending with a letter or digit); it becomes the value of label {label}"
        ))
    } else {
        None
    }
}

/// Why `name` cannot be an object name (a DNS-1123 subdomain: at most 253 lower-case letters,
/// digits, '-' and '.', starting and ending with a letter or digit); `None` when it can.
pub fn dns_subdomain_problem(name: &str) -> Option<String> {
    let syntax = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.');
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 253 {
        Some(format!(
            "{name:?} has {} characters; a name has 1 to 253",
            name.len()
        ))
    } else if !name.chars().all(syntax) || !ends(name.chars().next()) || !ends(name.chars().last())
    {
        Some(format!(
            "{name:?} is not a name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ))
    } else {
        None
    }
}

/// `value` when it is a valid label value, else a stable 63-character stand-in made of its
/// start and a digest: for labels that only inform (a claim's name on temporary objects).
pub fn label_value_or_digest(value: &str) -> String {
    if label_value_problem("", value, "").is_none() {
        return value.to_string();
    }
    let digest = blake3::hash(value.as_bytes()).to_hex();
    let start: String = value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(MAX_LABEL_VALUE - 17)
        .collect();
    let start = start.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let value = format!("{start}-{}", &digest[..16]);
    value.trim_start_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_label_values_are_said_with_their_field() {
        assert_eq!(label_value_problem("metadata.name", "db", "l"), None);
        assert_eq!(
            label_value_problem("metadata.name", &"a".repeat(63), "l"),
            None
        );
        let long = "a".repeat(64);
        let message = label_value_problem("metadata.name", &long, "siterecovery.io/failover")
            .expect("64 characters are too many");
        assert!(
            message.starts_with("metadata.name: ")
                && message.contains("64 characters")
                && message.contains("siterecovery.io/failover")
                && message.contains("at most 63"),
            "{message}"
        );
        assert!(label_value_problem("f", "-a", "l").is_some());
        assert!(label_value_problem("f", "a b", "l").is_some());
    }

    #[test]
    fn long_values_get_a_stable_valid_stand_in() {
        assert_eq!(label_value_or_digest("data-db-0"), "data-db-0");
        let long = format!("data-{}-0", "x".repeat(80));
        let v = label_value_or_digest(&long);
        assert_eq!(v, label_value_or_digest(&long));
        assert!(label_value_problem("f", &v, "l").is_none(), "{v}");
        assert_ne!(
            v,
            label_value_or_digest(&format!("data-{}-1", "x".repeat(80)))
        );
    }
}
