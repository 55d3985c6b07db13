//! The "by" clause of the relay's own `Received:` header, which names the relay and the
//! message's queue id. It is written on every message the relay accepts and read back from the
//! copies that come home (DSNs, feedback reports) to tell which message they are about, so the
//! writing and the reading live side by side here.

use std::fmt;

/// The comment that tells the relay's trace field from every other hop's.
pub const PRODUCT_COMMENT: &str = "(relayward)";

/// `by {hostname} (relayward) with {protocol} id {queue_id} [(node {node})]` (RFC 5321
/// section 4.4).
#[derive(Debug, Clone, Copy)]
pub struct ByClause<'a> {
    pub hostname: &'a str,
    /// RFC 3848 with-protocol: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA.
    pub protocol: &'a str,
    pub queue_id: &'a str,
    /// The node of a cluster that took the message, as a comment after the id.
    pub node: Option<&'a str>,
}

impl fmt::Display for ByClause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "by {} {PRODUCT_COMMENT} with {} id {}",
            self.hostname, self.protocol, self.queue_id
        )?;
        match self.node {
            Some(node) => write!(f, " (node {node})"),
            None => Ok(()),
        }
    }
}

/// The queue id in one `Received:` field value when the relay wrote that field, as
/// [`ByClause`] formats it; folding whitespace anywhere in between is fine.
pub fn queue_id(field_value: &str) -> Option<&str> {
    let mut words = field_value.split_ascii_whitespace();
    let mut prev: [&str; 2] = ["", ""];
    for word in words.by_ref() {
        if word == PRODUCT_COMMENT && prev[0] == "by" && !prev[1].is_empty() {
            break;
        }
        prev = [prev[1], word];
    }
    let [with, _protocol, id, value] = [words.next()?, words.next()?, words.next()?, words.next()?];
    if with != "with" || id != "id" {
        return None;
    }
    let value = value.strip_suffix(';').unwrap_or(value);
    let valid = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    valid.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes() {
        let by = ByClause {
            hostname: "relay.example.net",
            protocol: "ESMTPS",
            queue_id: "0PQ3ZK8M2V4X1RTA",
            node: None,
        };
        let one_rcpt =
            format!(" from mx.tenant.example ([192.0.2.7])\r\n\t{by}\r\n\tfor <a@b.example>; date");
        assert_eq!(queue_id(&one_rcpt), Some("0PQ3ZK8M2V4X1RTA"));
        let many = format!(" from h ([192.0.2.7])\r\n\t(using TLSv1.3 X)\r\n\t{by};\r\n\tdate");
        assert_eq!(queue_id(&many), Some("0PQ3ZK8M2V4X1RTA"));
        // A cluster node's name after the id does not change what is read back.
        let by = ByClause {
            node: Some("relay-b"),
            ..by
        };
        let clustered = format!(" from h ([192.0.2.7])\r\n\t{by};\r\n\tdate");
        assert!(
            clustered.contains("id 0PQ3ZK8M2V4X1RTA (node relay-b);"),
            "{clustered}"
        );
        assert_eq!(queue_id(&clustered), Some("0PQ3ZK8M2V4X1RTA"));
    }

    #[test]
    fn other_hops_are_not_ours() {
        for other in [
            "from relay.example.net (relay.example.net [192.0.2.10]) by mx.dest.example \
             (Postfix) with ESMTPS id 4Zx1Kq3Y1Vz9dB for <a@dest.example>; date",
            "from h by mx.google.com with ESMTPS id ik4si17674999wjb.144.2016.10.24",
            // The marker without the clause around it is a comment somebody wrote.
            "from h (relayward) by x with SMTP id Q1",
            "by relay.example.net (relayward) with ESMTP",
            "by relay.example.net (relayward) with ESMTP id <bad/id>;",
        ] {
            assert_eq!(queue_id(other), None, "{other}");
        }
    }
}
