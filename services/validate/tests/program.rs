//! `reel-validate` as an operator starts it.

#[test]
fn help_names_the_modes_and_a_missing_project_is_named() {
    reel_program::testing::assert_operator_surface(std::path::Path::new(env!("CARGO_BIN_EXE_reel-validate")));
}
