// Links liblorafuse.so: LORAFUSE_LIB_DIR names its folder (the C build's, e.g. build/), which is
// also written into the binaries' run path so that tests and examples find it without
// LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=LORAFUSE_LIB_DIR");
    if let Ok(dir) = std::env::var("LORAFUSE_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rustc-link-lib=dylib=lorafuse");
}
