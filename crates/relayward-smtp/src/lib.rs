//! relayward-smtp
