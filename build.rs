//! Build script: with the `mpi` feature, compiles the MPI shim against the MPI found
//! by `mpicc --showme` (Open MPI) or pkg-config's ompi-c / mpich.

fn main() {
    println!("cargo:rerun-if-changed=src/distributed/mpi_shim.c");
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "mpi")]
    build_mpi_shim();
}

#[cfg(feature = "mpi")]
fn showme(arg: &str) -> Option<Vec<String>> {
    let out = std::process::Command::new("mpicc").arg(arg).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect())
}

#[cfg(feature = "mpi")]
fn build_mpi_shim() {
    let compile =
        showme("--showme:compile").expect("feature `mpi` needs Open MPI's mpicc (apt-get install libopenmpi-dev)");
    let link = showme("--showme:link").unwrap_or_default();
    let mut build = cc::Build::new();
    build.file("src/distributed/mpi_shim.c").warnings(true).extra_warnings(true);
    for flag in &compile {
        if let Some(dir) = flag.strip_prefix("-I") {
            build.include(dir);
        } else {
            build.flag(flag);
        }
    }
    build.compile("gacc_mpi_shim");
    for flag in &link {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        }
    }
}
