//! `reel-generate`: the generation job as a program (pull or push mode; see reel-program).

fn main() -> std::process::ExitCode {
    reel_program::main::<reel_generate::Generate>()
}
