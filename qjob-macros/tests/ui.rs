//! Compile-time checks of `#[job]`: one failing case per error message
//! (`ui/fail/*.rs` with the expected `.stderr`) and passing cases.
//! Refresh the expectations with `TRYBUILD=overwrite cargo test -p qjob-macros --test ui`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
