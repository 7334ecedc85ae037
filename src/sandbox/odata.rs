//! Placeholder replaced by the OData `$filter` / `$orderby` parser.
