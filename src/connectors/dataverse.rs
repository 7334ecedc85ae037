//! Placeholder replaced by the dataverse client.
