//! Build script: compiles every `kernels/*.cu` to `compute_80` PTX with nvcc and embeds it; writes the kernel
//! table (every kernel's name and parameter kinds, read from the sources); checks that `src/bindings.rs` was
//! generated from the current `kernels/args.h`; under the `emulation` feature compiles the kernels as C++.
//!
//! nvcc is looked up as `$NVCC`, then `$CUDA_HOME/bin/nvcc`, then `$CUDA_PATH/bin/nvcc`, then `PATH`.
//! Without nvcc the committed copy in `kernels/ptx/` is embedded instead (with a cargo warning), so a
//! machine with only the NVIDIA driver still gets working kernels; `INCEPTION_CUDA_REQUIRE_NVCC=1` turns a
//! missing nvcc into an error instead. Writes only to `OUT_DIR`: `scripts/ptx.sh regen` refreshes the
//! committed copy from this script's output, so the flags below are the only ones.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The variable that turns a missing nvcc into a build error.
const REQUIRE_NVCC: &str = "INCEPTION_CUDA_REQUIRE_NVCC";
/// The pinned toolchain (DESIGN.md, "Building kernels"): its PTX (ISA 9.0) loads on R580+ drivers.
const PINNED_NVCC: &str = "13.0.88";
const PINNED_INSTALL: &str = "python3 -m pip install --target DIR nvidia-cuda-nvcc==13.0.88 \
nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88";
/// nvcc flags: paths stay relative to the crate root and there is no -lineinfo, so the PTX is reproducible.
const NVCC_FLAGS: &[&str] = &["--ptx", "-arch=compute_80", "-std=c++17", "-O3"];
/// With the `emulation` feature: `INCEPTION_CUDA_EMU_ASAN=1` builds the emulated kernels with AddressSanitizer.
const EMU_ASAN: &str = "INCEPTION_CUDA_EMU_ASAN";
/// With the `emulation` feature: `INCEPTION_CUDA_EMU_RACECHECK=1` builds the emulated kernels with gcc's
/// ThreadSanitizer instrumentation, whose callbacks the emulator's race checker takes (kernels/emu/emu.cpp).
const EMU_RACECHECK: &str = "INCEPTION_CUDA_EMU_RACECHECK";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    for var in [
        REQUIRE_NVCC,
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        EMU_ASAN,
        EMU_RACECHECK,
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/bindings.rs");
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
    check_bindings_fresh(&root)?;
    let sigs = sigs::parse_dir(&root, "kernels")?;
    sigs::write_table(&out, &sigs)?;
    #[cfg(feature = "emulation")]
    emulation::build(&sigs)?;
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return Ok(()); // CPU-only build: nothing to embed.
    }

    let ptx_out = out.join("ptx");
    fs::create_dir_all(&ptx_out).map_err(|e| format!("creating {}: {e}", ptx_out.display()))?;

    let kernels = list_kernels(&root)?;
    let strict = env::var(REQUIRE_NVCC).is_ok_and(|v| !v.is_empty() && v != "0");
    let origin = match find_nvcc()? {
        Some(nvcc) => {
            let version = nvcc_version(&nvcc)?;
            if version_newer_than_13_0(&version) {
                println!(
                    "cargo:warning=nvcc {version} ({}) is newer than 13.0: its PTX is rejected by R580 drivers \
                     (CUDA_ERROR_UNSUPPORTED_PTX_VERSION); the pinned nvcc is {PINNED_NVCC}",
                    nvcc.display()
                );
            }
            compile_all(&nvcc, &root, &ptx_out, &kernels)?;
            warn_if_committed_differs(&root, &ptx_out, &kernels, &version);
            format!("nvcc {version}")
        }
        None if strict => {
            return Err(format!(
                "{REQUIRE_NVCC} is set and nvcc was not found (looked at $NVCC, $CUDA_HOME/bin/nvcc, \
                 $CUDA_PATH/bin/nvcc and PATH).\nInstall the pinned nvcc (no GPU needed, about 271 MB):\n    \
                 {PINNED_INSTALL}\nthen build with NVCC=DIR/nvidia/cu13/bin/nvcc (scripts/install-nvcc.sh does \
                 both steps and prints that path)."
            ));
        }
        None => {
            println!(
                "cargo:warning=nvcc not found: embedding the committed PTX from kernels/ptx/ (set NVCC or \
                 install the pinned nvcc {PINNED_NVCC} to compile the kernels; {REQUIRE_NVCC}=1 makes this an error)"
            );
            for k in &kernels {
                let committed = root.join("kernels/ptx").join(format!("{k}.ptx"));
                fs::copy(&committed, ptx_out.join(format!("{k}.ptx"))).map_err(|e| {
                    format!(
                        "kernels/{k}.cu has no committed PTX at {} ({e}): install nvcc or run \
                         scripts/ptx.sh regen",
                        committed.display()
                    )
                })?;
            }
            "committed kernels/ptx (nvcc not found at build time)".to_string()
        }
    };
    write_module_table(&out, &ptx_out, &kernels, &origin)
}

/// Stems of `kernels/*.cu`, sorted.
fn list_kernels(root: &Path) -> Result<Vec<String>, String> {
    list_kernels_in(&root.join("kernels"))
}

/// Stems of the `.cu` files of `dir`, sorted.
fn list_kernels_in(dir: &Path) -> Result<Vec<String>, String> {
    let dir = dir.to_path_buf();
    let entries = fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut stems = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .path();
        if path.extension().is_some_and(|x| x == "cu") {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or("non-UTF-8 kernel file name")?;
            stems.push(stem.to_string());
        }
    }
    stems.sort();
    Ok(stems)
}

fn find_nvcc() -> Result<Option<PathBuf>, String> {
    if let Some(explicit) = env::var_os("NVCC").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&explicit);
        return if path.is_file() {
            Ok(Some(path))
        } else {
            Err(format!("NVCC={} is not a file", path.display()))
        };
    }
    let homes = ["CUDA_HOME", "CUDA_PATH"]
        .into_iter()
        .filter_map(env::var_os);
    let from_homes = homes.map(|h| PathBuf::from(h).join("bin").join("nvcc"));
    let from_path = env::var_os("PATH")
        .map(|p| {
            env::split_paths(&p)
                .map(|d| d.join("nvcc"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Ok(from_homes.chain(from_path).find(|p| p.is_file()))
}

/// "13.0.88" from `nvcc --version` ("... release 13.0, V13.0.88").
fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let output = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('V'))
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "could not read the version of {} from:\n{text}",
                nvcc.display()
            )
        })
}

fn version_newer_than_13_0(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) > (13, 0)
}

/// Compiles every kernel (in parallel); the first failure returns nvcc's own message.
fn compile_all(nvcc: &Path, root: &Path, ptx_out: &Path, kernels: &[String]) -> Result<(), String> {
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = kernels
            .iter()
            .map(|k| s.spawn(move || compile_one(nvcc, root, ptx_out, k)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("nvcc thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect()
}

fn compile_one(nvcc: &Path, root: &Path, ptx_out: &Path, kernel: &str) -> Result<(), String> {
    let source = format!("kernels/{kernel}.cu"); // relative: no absolute path reaches the PTX
    let target: OsString = ptx_out.join(format!("{kernel}.ptx")).into_os_string();
    let output = Command::new(nvcc)
        .current_dir(root)
        .args(NVCC_FLAGS)
        .arg("-o")
        .arg(&target)
        .arg(&source)
        .output()
        .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nvcc failed to compile {source} ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn warn_if_committed_differs(root: &Path, ptx_out: &Path, kernels: &[String], version: &str) {
    let stale: Vec<&str> = kernels
        .iter()
        .filter(|k| {
            let fresh = fs::read(ptx_out.join(format!("{k}.ptx"))).ok();
            let committed = fs::read(root.join("kernels/ptx").join(format!("{k}.ptx"))).ok();
            fresh != committed
        })
        .map(String::as_str)
        .collect();
    if !stale.is_empty() {
        let why = if version == PINNED_NVCC {
            "run scripts/ptx.sh regen and commit the result".to_string()
        } else {
            format!("nvcc {version} is not the pinned {PINNED_NVCC}, whose output is what gets committed")
        };
        println!(
            "cargo:warning=committed PTX differs from this build for {}: {why}",
            stale.join(", ")
        );
    }
}

/// Writes `OUT_DIR/ptx_modules.rs`: the embedded modules and where their PTX came from.
fn write_module_table(
    out: &Path,
    ptx_out: &Path,
    kernels: &[String],
    origin: &str,
) -> Result<(), String> {
    let mut code =
        String::from("/// Embedded PTX modules: (module name = `kernels/<name>.cu`, PTX text).\n");
    code.push_str("pub(crate) const MODULES: &[(&str, &str)] = &[\n");
    for k in kernels {
        let path = ptx_out.join(format!("{k}.ptx"));
        let path = path.to_str().ok_or("non-UTF-8 OUT_DIR")?;
        code.push_str(&format!("    ({k:?}, include_str!({path:?})),\n"));
    }
    code.push_str("];\n/// Where the embedded PTX came from.\n");
    code.push_str(&format!(
        "pub(crate) const PTX_ORIGIN: &str = {origin:?};\n"
    ));
    let table = out.join("ptx_modules.rs");
    fs::write(&table, code).map_err(|e| format!("writing {}: {e}", table.display()))
}

/// Comments replaced by spaces, newlines kept (so line numbers still match the source).
fn strip_comments(s: &str) -> String {
    let (b, mut out, mut i) = (s.as_bytes(), String::with_capacity(s.len()), 0);
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = s[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            out.extend(
                s[i..end]
                    .chars()
                    .map(|c| if c == '\n' { '\n' } else { ' ' }),
            );
            i = end;
        } else {
            let c = s[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `s` without its `__launch_bounds__(...)` qualifiers (empty under emulation; they would hide the kernel's
/// name from `launchers`).
fn strip_launch_bounds(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("__launch_bounds__") {
        let close = rest[at..].find(')').ok_or("unclosed __launch_bounds__")?;
        out.push_str(&rest[..at]);
        rest = &rest[at + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The parameter lists of the kernels, read from the `.cu` sources: the one place a kernel's arguments are
/// declared. build.rs turns them into the Rust kernel table (`OUT_DIR/kernel_table.rs`: the `Kernel` enum
/// and each kernel's parameter kinds, which every launch is checked against) and, under emulation, into
/// the emulator's kernelParams-style entry point.
mod sigs {
    use super::*;

    /// One `__global__` function: its file stem, name and `(C type, name)` parameters.
    #[derive(Clone)]
    pub struct KernelSig {
        pub module: String,
        pub name: String,
        pub params: Vec<(String, String)>,
    }

    /// The `ParamKind` (src/launcher.rs) of a normalised C parameter type.
    pub fn kind(ctype: &str) -> Option<&'static str> {
        Some(match ctype {
            "float*" => "Out",
            "const float*" => "In",
            "const unsigned int*" => "Labels",
            "unsigned int*" => "LabelsOut",
            "unsigned int" => "U32",
            "int" => "I32",
            "unsigned long long" => "U64",
            "float" => "F32",
            "ConvDims" => "ConvDims",
            "ReduceDims" => "ReduceDims",
            "GemmDims" => "GemmDims",
            "AdamScalars" => "AdamScalars",
            _ => return None,
        })
    }

    /// Every kernel of the `.cu` files of `root/dir`, files in name order, kernels in source order.
    pub fn parse_dir(root: &Path, dir: &str) -> Result<Vec<KernelSig>, String> {
        let mut sigs = Vec::new();
        for stem in list_kernels_in(&root.join(dir))? {
            let src = format!("{dir}/{stem}.cu");
            let text =
                fs::read_to_string(root.join(&src)).map_err(|e| format!("reading {src}: {e}"))?;
            sigs.extend(parse(&stem, &strip_comments(&text)).map_err(|e| format!("{src}: {e}"))?);
        }
        Ok(sigs)
    }

    /// The `__global__` functions of one source (comments already stripped).
    pub fn parse(module: &str, code: &str) -> Result<Vec<KernelSig>, String> {
        let code = strip_launch_bounds(code)?;
        let mut sigs = Vec::new();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("__global__") {
            let after = &rest[at + "__global__".len()..];
            let open = after
                .find('(')
                .ok_or("__global__ without a parameter list")?;
            let head = after[..open].trim();
            let name = head
                .strip_prefix("void")
                .map(str::trim)
                .filter(|n| n.chars().all(is_ident) && !n.is_empty())
                .ok_or_else(|| format!("cannot parse the kernel declaration `{head}`"))?;
            let mut depth = 0;
            let close = after[open..]
                .char_indices()
                .find_map(|(i, c)| {
                    depth += i32::from(c == '(') - i32::from(c == ')');
                    (depth == 0).then_some(open + i)
                })
                .ok_or("unbalanced parameter list")?;
            let mut params = Vec::new();
            for p in after[open + 1..close].split(',').map(str::trim) {
                if p.is_empty() {
                    continue;
                }
                let p = p.split('[').next().unwrap_or(p).trim_end();
                let start = p.rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
                let ctype = p[..start]
                    .replace("__restrict__", " ")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .replace(" *", "*");
                params.push((ctype, p[start..].to_string()));
            }
            sigs.push(KernelSig {
                module: module.to_string(),
                name: name.to_string(),
                params,
            });
            rest = &after[close..];
        }
        Ok(sigs)
    }

    /// `add_fwd` → `AddFwd`, `maxpool3x3s1_bwd` → `Maxpool3x3s1Bwd`.
    fn camel(name: &str) -> String {
        name.split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Writes `OUT_DIR/kernel_table.rs`: the `Kernel` enum with each kernel's name, module and parameters.
    pub fn write_table(out: &Path, sigs: &[KernelSig]) -> Result<(), String> {
        let mut variants = String::new();
        let (mut all, mut names, mut modules, mut params) =
            (String::new(), String::new(), String::new(), String::new());
        for k in sigs {
            let v = camel(&k.name);
            variants.push_str(&format!(
                "    /// `{}` of `kernels/{}.cu`.\n    {v},\n",
                k.name, k.module
            ));
            all.push_str(&format!("Kernel::{v}, "));
            names.push_str(&format!("            Kernel::{v} => {:?},\n", k.name));
            modules.push_str(&format!("            Kernel::{v} => {:?},\n", k.module));
            let mut list = String::new();
            for (ctype, name) in &k.params {
                let kind = kind(ctype).ok_or_else(|| {
                    format!(
                        "kernels/{}.cu: parameter `{name}` of {} has the type `{ctype}`, which has no \
                         ParamKind (src/launcher.rs) yet",
                        k.module, k.name
                    )
                })?;
                list.push_str(&format!("({name:?}, ParamKind::{kind}), "));
            }
            params.push_str(&format!("            Kernel::{v} => &[{list}],\n"));
        }
        let code = format!(
            "/// Every kernel of `kernels/*.cu` (generated by build.rs from the sources).\n\
             #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]\n\
             pub enum Kernel {{\n{variants}}}\n\n\
             impl Kernel {{\n\
             \x20   /// How many kernels there are.\n\
             \x20   pub const COUNT: usize = {count};\n\n\
             \x20   /// Every kernel, modules in name order, kernels in source order (`Kernel::ALL[k as usize] == k`).\n\
             \x20   pub const ALL: [Kernel; Kernel::COUNT] = [{all}];\n\n\
             \x20   /// The kernel's name in `kernels/*.cu` and in the PTX.\n\
             \x20   pub const fn name(self) -> &'static str {{\n        match self {{\n{names}        }}\n    }}\n\n\
             \x20   /// The file stem of the `.cu` file that defines it (the PTX module).\n\
             \x20   pub const fn module(self) -> &'static str {{\n        match self {{\n{modules}        }}\n    }}\n\n\
             \x20   /// Its parameters in order, `(name, kind)`, as declared in the `.cu` file.\n\
             \x20   pub const fn params(self) -> &'static [(&'static str, ParamKind)] {{\n        match self {{\n{params}        }}\n    }}\n\
             }}\n",
            count = sigs.len()
        );
        let path = out.join("kernel_table.rs");
        fs::write(&path, code).map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// The committed `src/bindings.rs` (bindgen's output for `kernels/args.h`, made by `scripts/bindings.sh`)
/// starts with the FNV-1a hash of the header it was generated from: a header changed without regenerating
/// the bindings fails every build, with or without libclang. (CI also regenerates them with a pinned
/// libclang and compares.)
fn check_bindings_fresh(root: &Path) -> Result<(), String> {
    let header = fs::read(root.join("kernels/args.h"))
        .map_err(|e| format!("reading kernels/args.h: {e}"))?;
    let hash = header.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let bindings = fs::read_to_string(root.join("src/bindings.rs"))
        .map_err(|e| format!("reading src/bindings.rs: {e}"))?;
    let stamp = format!("kernels/args.h fnv1a64 {hash:016x}");
    if bindings.contains(&stamp) {
        Ok(())
    } else {
        Err(format!(
            "src/bindings.rs was not generated from the current kernels/args.h (expected the stamp \
             `{stamp}`): run scripts/bindings.sh regen and commit src/bindings.rs"
        ))
    }
}
/// The `emulation` feature: every `kernels/*.cu` (and the planted-bug kernels of `kernels/emu/planted/`)
/// compiled as C++20 against `kernels/emu/cuda_emu.h`, with the kernelParams entry point `emu_launch`.
#[cfg(feature = "emulation")]
mod emulation {
    use super::*;

    /// `sigs`: the kernels of `kernels/*.cu` (in `Kernel::ALL` order), which get kernelParams launchers and
    /// the `emu_launch` entry point; the planted-bug kernels get typed launchers.
    pub fn build(sigs: &[sigs::KernelSig]) -> Result<(), String> {
        let root =
            PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
        let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?).join("emu");
        fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
        let mut sources = Vec::new();
        for dir in ["kernels", "kernels/emu/planted"] {
            for stem in list_dir(&root.join(dir))? {
                sources.push((dir, stem));
            }
        }
        let flag_set = |var| env::var(var).is_ok_and(|v| !v.is_empty() && v != "0");
        let (asan, racecheck) = (flag_set(EMU_ASAN), flag_set(EMU_RACECHECK));
        if asan && racecheck {
            return Err(format!(
                "{EMU_ASAN} and {EMU_RACECHECK} cannot be combined (gcc's address and thread \
                 instrumentation exclude each other): set one"
            ));
        }
        let new_build = || {
            let mut build = cc::Build::new();
            build
                .cpp(true)
                .std("c++20")
                .opt_level(2)
                .include(root.join("kernels/emu"))
                .include(root.join("kernels")) // adam.cuh, args.h
                .flag("-Wno-unknown-pragmas")
                .flag("-Wno-volatile");
            build
        };
        let mut build = new_build();
        // The runtime is never instrumented: under racecheck it is the instrumentation's callee.
        let mut runtime = new_build();
        runtime.file(root.join("kernels/emu/emu.cpp"));
        if racecheck {
            // The runtime checks; it sees the vector types as the kernels do (cuda_emu.h).
            runtime.define("INCEPTION_CUDA_EMU_RACECHECK", "1");
            build
                .define("INCEPTION_CUDA_EMU_RACECHECK", "1")
                .flag("-fsanitize=thread")
                .flag("--param=tsan-instrument-func-entry-exit=0");
            println!("cargo:rustc-cfg=emu_racecheck");
        }
        println!("cargo:rustc-check-cfg=cfg(emu_racecheck)");
        let mut next_id = 0;
        for (dir, stem) in &sources {
            let src = format!("{dir}/{stem}.cu");
            let text =
                fs::read_to_string(root.join(&src)).map_err(|e| format!("reading {src}: {e}"))?;
            let code = strip_comments(&text);
            let wrappers = if *dir == "kernels" {
                let own: Vec<_> = sigs.iter().filter(|k| k.module == *stem).collect();
                param_launchers(&own.into_iter().cloned().collect::<Vec<_>>())
            } else {
                typed_launchers(&sigs::parse(stem, &code).map_err(|e| format!("{src}: {e}"))?)
            };
            let body = rewrite_shared(&code, &mut next_id).map_err(|e| format!("{src}: {e}"))?;
            // Kernels become file-local (no clash with C library names); their launchers are the exports.
            let body = body.replace("extern \"C\" __global__", "static __global__");
            let file = out.join(src.replace('/', "_").replace(".cu", ".cpp"));
            let cpp = format!("#include \"cuda_emu.h\"\n#line 1 \"{src}\"\n{body}\n{wrappers}");
            fs::write(&file, cpp).map_err(|e| format!("writing {}: {e}", file.display()))?;
            build.file(file);
        }
        let dispatch = out.join("emu_launch.cpp");
        fs::write(&dispatch, dispatcher(sigs))
            .map_err(|e| format!("writing {}: {e}", dispatch.display()))?;
        build.file(dispatch);
        if asan {
            for b in [&mut build, &mut runtime] {
                b.flag("-fsanitize=address").flag("-fno-omit-frame-pointer");
            }
            println!("cargo:rustc-link-lib=dylib=asan");
            println!("cargo:rustc-cfg=emu_asan");
        }
        println!("cargo:rustc-check-cfg=cfg(emu_asan)");
        // Kernels first: the linker then meets the runtime they call after them.
        build
            .try_compile("inception_cuda_emu")
            .map_err(|e| format!("compiling the emulated kernels: {e}"))?;
        runtime
            .try_compile("inception_cuda_emu_runtime")
            .map_err(|e| format!("compiling the emulator (kernels/emu/emu.cpp): {e}"))
    }

    fn list_dir(dir: &Path) -> Result<Vec<String>, String> {
        if !dir.exists() {
            return Ok(Vec::new());
        }
        super::list_kernels_in(dir)
    }

    /// `(type, name, dims)` of a declaration such as `float tile[16][17]`.
    fn split_decl(decl: &str) -> Result<(String, String, String), String> {
        let decl = match decl.find("__align__") {
            Some(at) => {
                let close = decl[at..].find(')').ok_or("unclosed __align__")? + at;
                format!("{}{}", &decl[..at], &decl[close + 1..])
            }
            None => decl.to_string(),
        };
        let cut = decl.find('[').unwrap_or(decl.len());
        let (head, dims) = (decl[..cut].trim_end(), decl[cut..].trim());
        let name_start = head.rfind(|c: char| !is_ident(c)).map_or(0, |p| p + 1);
        let (ty, name) = (head[..name_start].trim(), &head[name_start..]);
        if ty.is_empty() || name.is_empty() {
            return Err(format!("cannot parse the __shared__ declaration `{decl}`"));
        }
        Ok((ty.to_string(), name.to_string(), dims.to_string()))
    }

    /// `__shared__ T name[dims];` → a per-block slot; `extern __shared__ T name[];` → the dynamic buffer.
    fn rewrite_shared(s: &str, next_id: &mut usize) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find("__shared__") {
            let before = &rest[..at];
            let trimmed = before.trim_end();
            let is_extern = trimmed.ends_with("extern");
            let keep = if is_extern {
                &trimmed[..trimmed.len() - "extern".len()]
            } else {
                before
            };
            let after = &rest[at + "__shared__".len()..];
            let semi = after
                .find(';')
                .ok_or("__shared__ declaration without `;`")?;
            let (ty, name, dims) = split_decl(&after[..semi])?;
            out.push_str(keep);
            if is_extern {
                out.push_str(&format!("{ty}* {name} = ::emu::shared_dyn<{ty}>();"));
            } else {
                *next_id += 1;
                out.push_str(&format!(
                    "auto& {name} = ::emu::shared_slot<{ty}{dims}>({});",
                    *next_id
                ));
            }
            rest = &after[semi + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
    /// `extern "C" int emu_kernel_<name>(const emu::Launch*, void* const* params)` for each kernel of a
    /// `kernels/*.cu` file: the parameters read from a kernelParams array, as `cuLaunchKernel` reads them.
    fn param_launchers(sigs: &[sigs::KernelSig]) -> String {
        let mut out = String::new();
        for k in sigs {
            let args: Vec<String> = k
                .params
                .iter()
                .enumerate()
                .map(|(i, (ctype, _))| format!("*static_cast<{ctype}*>(p[{i}])"))
                .collect();
            out.push_str(&format!(
                "extern \"C\" int emu_kernel_{name}(const ::emu::Launch* cfg, void* const* p) {{\n  \
                 return ::emu::launch(*cfg, [&]() {{ {name}({}); }});\n}}\n",
                args.join(", "),
                name = k.name
            ));
        }
        out
    }

    /// `extern "C" int emu_launch_<name>(const emu::Launch*, <params>)` for each planted-bug kernel
    /// (src/emu/planted.rs calls them directly).
    fn typed_launchers(sigs: &[sigs::KernelSig]) -> String {
        let mut out = String::new();
        for k in sigs {
            let params: Vec<String> = k.params.iter().map(|(t, n)| format!("{t} {n}")).collect();
            let names: Vec<&str> = k.params.iter().map(|(_, n)| n.as_str()).collect();
            let sep = if params.is_empty() { "" } else { ", " };
            out.push_str(&format!(
                "extern \"C\" int emu_launch_{name}(const ::emu::Launch* cfg{sep}{}) {{\n  \
                 return ::emu::launch(*cfg, [&]() {{ {name}({}); }});\n}}\n",
                params.join(", "),
                names.join(", "),
                name = k.name
            ));
        }
        out
    }

    /// The entry point: `int emu_launch(unsigned kernel, const emu::Launch*, void* const* params)`, `kernel`
    /// being the index of the kernel in `Kernel::ALL` (-1 for an unknown index).
    fn dispatcher(sigs: &[sigs::KernelSig]) -> String {
        let mut decls = String::new();
        let mut cases = String::new();
        for (i, k) in sigs.iter().enumerate() {
            decls.push_str(&format!(
                "extern \"C\" int emu_kernel_{}(const ::emu::Launch*, void* const*);\n",
                k.name
            ));
            cases.push_str(&format!(
                "    case {i}: return emu_kernel_{}(cfg, params);\n",
                k.name
            ));
        }
        format!(
            "#include \"cuda_emu.h\"\n{decls}\nextern \"C\" int emu_launch(unsigned int kernel, const ::emu::Launch* cfg, \
             void* const* params) {{\n  switch (kernel) {{\n{cases}    default: return -1;\n  }}\n}}\n"
        )
    }
}
