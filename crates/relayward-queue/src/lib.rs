//! relayward-queue
