//! relayward-policy
