//! Placeholder replaced by the salesforce client.
