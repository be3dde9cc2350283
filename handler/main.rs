fn main() {
    // args_os: a non-UTF-8 argument is a usage error from run(), where std::env::args() would panic.
    std::process::exit(ibdriver::run(std::env::args_os().skip(1).collect()));
}
