//! The guides: how to write, test, order, prioritise, protect, observe and
//! operate jobs.
//!
//! Each page is a module without items, the same text as the Markdown page
//! in the repository's `qjob/docs/` folder. Start with the [`guide`].

/// The link targets of the pages' (and the README's) reference links in
/// rustdoc: listed before a page's text, these definitions win over the
/// page's own, which point at the Markdown files for readers of the
/// repository.
macro_rules! page {
    ($(#[$attr:meta])* $name:ident, $file:literal) => {
        #[doc = include_str!("docs/links.md")]
        #[doc = include_str!($file)]
        $(#[$attr])*
        pub mod $name {}
    };
}

page!(guide, "../docs/guide.md");
page!(testing, "../docs/testing.md");
page!(delays, "../docs/delays.md");
page!(ordering, "../docs/ordering.md");
page!(protection, "../docs/protection.md");
page!(metrics, "../docs/metrics.md");
page!(tracing, "../docs/tracing.md");
page!(operations, "../docs/operations.md");
page!(configuration, "../docs/configuration.md");
page!(settlement, "../docs/settlement.md");
page!(cluster, "../docs/cluster.md");
page!(console, "../docs/console.md");
page!(unique, "../docs/unique.md");
page!(periodic, "../docs/periodic.md");
page!(batches, "../docs/batches.md");
page!(outbox, "../docs/outbox.md");
page!(performance, "../docs/performance.md");
page!(limits, "../docs/limits.md");
