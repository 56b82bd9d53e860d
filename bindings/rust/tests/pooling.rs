//! The crate against a float64 window-by-window reference, its errors, and a real daemon.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tidepool::{Client, Pool, PoolKind, Ties};

/// Deterministic numbers without a dependency (SplitMix64).
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

/// MLX's pooling, window by window in float64, for a channels-last `shape` with `dims` spatial
/// axes: padding counts in the average (zeros) and never wins the max (-inf).
fn reference(kind: PoolKind, x: &[f64], shape: &[usize], k: &[usize], s: &[usize], p: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let dims = k.len();
    let spatial = &shape[1..1 + dims];
    let channels = shape[dims + 1];
    let out_spatial: Vec<usize> = (0..dims).map(|a| (spatial[a] + 2 * p[a] - k[a]) / s[a] + 1).collect();
    let mut out_shape = vec![shape[0]];
    out_shape.extend(&out_spatial);
    out_shape.push(channels);
    let count: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(count);
    let window: usize = k.iter().product();
    for index in 0..count {
        let mut rest = index;
        let c = rest % channels;
        rest /= channels;
        let mut o = vec![0; dims];
        for a in (0..dims).rev() {
            o[a] = rest % out_spatial[a];
            rest /= out_spatial[a];
        }
        let n = rest;
        let (mut sum, mut best) = (0.0, f64::NEG_INFINITY);
        for tap in 0..window {
            let mut t = tap;
            let mut offset = n;
            let mut inside = true;
            for a in 0..dims {
                let kt = t % k[a];
                t /= k[a];
                let i = (o[a] * s[a] + kt) as isize - p[a] as isize;
                inside &= i >= 0 && (i as usize) < spatial[a];
                offset = offset * spatial[a] + i.max(0) as usize;
            }
            if inside {
                let v = x[offset * channels + c];
                sum += v;
                best = best.max(v);
            }
        }
        out.push(if kind == PoolKind::Avg { sum / window as f64 } else { best });
    }
    (out, out_shape)
}

#[test]
fn random_layers_match_the_reference() {
    let mut numbers = Numbers(7);
    for case in 0..300 {
        let dims = 1 + numbers.below(3);
        let k: Vec<usize> = (0..dims).map(|_| 1 + numbers.below(4)).collect();
        let s: Vec<usize> = (0..dims).map(|_| 1 + numbers.below(3)).collect();
        let p: Vec<usize> = k.iter().map(|&k| numbers.below(k as u64 / 2 + 1)).collect();
        let mut shape = vec![1 + numbers.below(2)];
        shape.extend(k.iter().map(|&k| k + numbers.below(6)));
        shape.push(1 + numbers.below(9));
        let size: usize = shape.iter().product();
        let kind = if case % 2 == 0 { PoolKind::Avg } else { PoolKind::Max };
        let as_i64 = |v: &[usize]| v.iter().map(|&n| n as i64).collect::<Vec<_>>();
        let pool = Pool::new(kind, &as_i64(&k), Some(&as_i64(&s)), &as_i64(&p)).unwrap();

        let x: Vec<f32> = (0..size).map(|_| (numbers.next() % 2001) as f32 / 100.0 - 10.0).collect();
        let wide: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let (expected, expected_shape) = reference(kind, &wide, &shape, &k, &s, &p);
        let (y, y_shape) = match kind {
            PoolKind::Avg => pool.avg(&x, &shape).unwrap(),
            PoolKind::Max => pool.max(&x, &shape).unwrap(),
        };
        assert_eq!(y_shape, expected_shape, "case {case}");
        for (got, want) in y.iter().zip(&expected) {
            assert!((*got as f64 - want).abs() <= 1e-6 + 1e-5 * want.abs(), "case {case}: {got} vs {want}");
        }

        // Integers: averages are float32, max keeps the type, both exact here.
        let xi: Vec<i8> = (0..size).map(|_| (numbers.next() % 256) as u8 as i8).collect();
        let widei: Vec<f64> = xi.iter().map(|&v| v as f64).collect();
        let (expected, _) = reference(kind, &widei, &shape, &k, &s, &p);
        match kind {
            PoolKind::Avg => {
                let (y, _) = pool.avg(&xi, &shape).unwrap();
                for (got, want) in y.iter().zip(&expected) {
                    assert_eq!(*got, *want as f32, "case {case}");
                }
            }
            PoolKind::Max => {
                let (y, _) = pool.max(&xi, &shape).unwrap();
                assert_eq!(y, expected.iter().map(|&v| v as i8).collect::<Vec<_>>(), "case {case}");
            }
        }
    }
}

#[test]
fn borrowed_output_is_filled_in_place() {
    let pool = Pool::new(PoolKind::Avg, &[2], None, &[0]).unwrap();
    let x = [1.0f64, 3.0, 5.0, 7.0];
    let mut out = [0.0f64; 2];
    assert_eq!(pool.run_into(&x, &[1, 4, 1], &mut out).unwrap(), vec![1, 2, 1]);
    assert_eq!(out, [2.0, 6.0]);
}

#[test]
fn pytorch_options() {
    // avg_pool1d(arange(1, 6), 2, 2, ceil_mode=True) and (3, 1, 1, count_include_pad=False),
    // as PyTorch gives them.
    let x = [1.0f64, 2.0, 3.0, 4.0, 5.0];
    let ceil = Pool::new(PoolKind::Avg, &[2], None, &[0]).unwrap().ceil_mode(true);
    assert_eq!(ceil.avg(&x, &[1, 5, 1]).unwrap(), (vec![1.5, 3.5, 5.0], vec![1, 3, 1]));
    let inside = Pool::new(PoolKind::Avg, &[3], Some(&[1]), &[1]).unwrap().count_include_pad(false);
    assert_eq!(inside.avg(&x, &[1, 5, 1]).unwrap().0, vec![1.5, 2.0, 3.0, 4.0, 4.5]);
    let max = Pool::new(PoolKind::Max, &[2], None, &[0]).unwrap().ceil_mode(true);
    assert_eq!(max.max(&x, &[1, 5, 1]).unwrap().0, vec![2.0, 4.0, 5.0]);
    let error = max.count_include_pad(false).max(&x, &[1, 5, 1]).err().unwrap();
    assert_eq!(error.status, tidepool::sys::TP_ERR_INVALID_ARGUMENT);
    assert!(error.message.contains("count_include_pad=False applies to average pooling only"), "{}", error.message);
}

#[test]
fn errors_carry_the_status_and_the_message() {
    let error = Pool::new(PoolKind::Max, &[0, 2], None, &[0, 0]).err().unwrap();
    assert_eq!(error.status, tidepool::sys::TP_ERR_INVALID_ARGUMENT);
    assert!(error.message.contains("kernel_size"), "{error}");
    assert_eq!(error.status_name(), "TP_ERR_INVALID_ARGUMENT");

    let pool = Pool::new(PoolKind::Avg, &[5], Some(&[1]), &[0]).unwrap();
    let error = pool.avg(&[0.0f32; 2], &[1, 2, 1]).err().unwrap();
    assert_eq!(error.status, tidepool::sys::TP_ERR_SHAPE, "{error}");

    // A wrong output type: an average of int8 is float32.
    let pool = Pool::new(PoolKind::Avg, &[2], None, &[0]).unwrap();
    let mut out = [0i8; 1];
    let error = pool.run_into(&[1i8, 2], &[1, 2, 1], &mut out).err().unwrap();
    assert_eq!(error.status, tidepool::sys::TP_ERR_DTYPE, "{error}");
    assert!(error.message.contains("float32"), "{error}");

    // The slice and the shape disagree.
    assert!(pool.avg(&[1.0f32; 3], &[1, 2, 1]).is_err());
    // The layer's kind is checked.
    assert!(pool.max(&[1.0f32; 2], &[1, 2, 1]).is_err());
}

#[test]
fn version_is_the_headers() {
    let header = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../include/tidepool.h")).unwrap();
    let part = |name: &str| {
        header.lines().find_map(|l| l.strip_prefix(&format!("#define TP_VERSION_{name} "))).unwrap().trim().to_owned()
    };
    assert_eq!(tidepool::version(), format!("{}.{}.{}", part("MAJOR"), part("MINOR"), part("PATCH")));
    assert_eq!(env!("CARGO_PKG_VERSION"), tidepool::version());
    let level = tidepool::cpu_level();
    assert!(level == "x86-64" || level == "x86-64-v3", "{level}");
    if std::env::var("TIDEPOOL_CPU").as_deref() == Ok("baseline") {
        assert_eq!(level, "x86-64");
    }
}

#[test]
fn a_daemon_pools_as_the_library_does() {
    let daemon_path = tidepoold();
    let directory = std::env::temp_dir().join(format!("tidepool-rust-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let endpoint = format!("ipc://{}/tidepool.sock", directory.display());
    let mut daemon = Command::new(&daemon_path)
        .args(["--endpoint", &endpoint, "--log-level", "warning"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", daemon_path.display()));
    // The daemon prints its endpoints once it serves them.
    let mut line = String::new();
    BufReader::new(daemon.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "{line}");

    let result = std::panic::catch_unwind(|| {
        let client = Client::connect(Some(&endpoint), 10_000).unwrap();
        assert!(client.ping().unwrap() >= 0.0);
        let pool = Pool::new(PoolKind::Max, &[3, 3], Some(&[2, 2]), &[1, 1]).unwrap();
        let shape = [2, 9, 9, 4];
        let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 37) % 101) as f32).collect();
        let (local, out_shape) = pool.max(&x, &shape).unwrap();
        let mut remote = vec![0.0f32; local.len()];
        assert_eq!(client.run_into(&pool, &x, &shape, &mut remote).unwrap(), out_shape);
        assert_eq!(remote, local);
        assert!(client.stats().unwrap().contains("\"jobs_completed\": 1"));
        let error = client.run_into(&pool, &x, &[2, 9, 9, 5], &mut remote).err().unwrap();
        assert_eq!(error.status, tidepool::sys::TP_ERR_INVALID_ARGUMENT, "{error}");
        // The gradient on the daemon equals the in-process one, for both tie rules (x's
        // values repeat, so windows tie).
        let cotangent: Vec<f32> = (0..local.len()).map(|i| (i % 7) as f32 - 3.0).collect();
        for ties in [Ties::Split, Ties::First] {
            let expected = pool.backward(&x, &shape, &cotangent, ties).unwrap();
            assert_eq!(client.backward(&pool, &x, &shape, &cotangent, ties).unwrap(), expected);
        }
        let error = client.backward(&pool, &x, &shape, &cotangent[1..], Ties::Split).err().unwrap();
        assert_eq!(error.status, tidepool::sys::TP_ERR_INVALID_ARGUMENT, "{error}");
    });
    stop(daemon, &directory, result);
}

#[test]
fn gradients_follow_mlx_and_pytorch() {
    // MaxPool1d(2, stride=1) on [1, 3, 3, 2] with a cotangent of ones: MLX's split, PyTorch's first.
    let pool = Pool::new(PoolKind::Max, &[2], Some(&[1]), &[0]).unwrap();
    let x = [1.0f32, 3.0, 3.0, 2.0];
    assert_eq!(pool.backward(&x, &[1, 4, 1], &[1.0f32; 3], Ties::Split).unwrap(), vec![0.0, 1.5, 1.5, 0.0]);
    assert_eq!(pool.backward(&x, &[1, 4, 1], &[1.0f32; 3], Ties::First).unwrap(), vec![0.0, 2.0, 1.0, 0.0]);
    // AvgPool1d(2, stride=1, padding=1): every window's cotangent / 2 to its in-bounds elements.
    let avg = Pool::new(PoolKind::Avg, &[2], Some(&[1]), &[1]).unwrap();
    let g = [1.0f64, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(avg.backward(&[0.0f64; 4], &[1, 4, 1], &g, Ties::Split).unwrap(), vec![1.5, 2.5, 3.5, 4.5]);
    // Integers have no gradient; the cotangent must have the output's size.
    let error = pool.backward(&[1i8, 3, 3, 2], &[1, 4, 1], &[1i8; 3], Ties::Split).unwrap_err();
    assert!(error.to_string().contains("floating-point inputs"), "{error}");
    assert!(pool.backward(&x, &[1, 4, 1], &[1.0f32; 2], Ties::Split).is_err());
}

#[test]
fn curve_admits_the_authorized_client_only() {
    let daemon_path = tidepoold();
    let directory = std::env::temp_dir().join(format!("tidepool-rust-curve-{}", std::process::id()));
    let authorized = directory.join("authorized");
    std::fs::create_dir_all(&authorized).unwrap();
    for name in ["server", "alice", "mallory"] {
        let made = Command::new(&daemon_path).arg("keygen").arg(directory.join(name)).output().unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }
    std::fs::copy(directory.join("alice.key"), authorized.join("alice.key")).unwrap();
    let mut daemon = Command::new(&daemon_path)
        .args(["--endpoint", "tcp://127.0.0.1:0", "--log-level", "error", "--curve-authorized-keys"])
        .arg(&authorized)
        .arg("--curve-secret-key")
        .arg(directory.join("server.key_secret"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(daemon.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let path = |name: &str| directory.join(name).to_str().unwrap().to_owned();
    let result = std::panic::catch_unwind(|| {
        let endpoint = line.split("listening on ").nth(1).expect(&line).trim().to_owned();
        let client = Client::connect_curve(&endpoint, 10_000, &path("server.key"), &path("alice.key_secret")).unwrap();
        assert!(client.ping().unwrap() >= 0.0);
        assert!(client.stats().unwrap().contains("\"curve\": true"));
        let refused = Client::connect_curve(&endpoint, 3_000, &path("server.key"), &path("mallory.key_secret")).err().unwrap();
        assert_eq!(refused.status, tidepool::sys::TP_ERR_CONNECTION, "{refused}");
        let error = Client::connect_curve(&endpoint, 3_000, &path("server.key"), "").err().unwrap();
        assert_eq!(error.status, tidepool::sys::TP_ERR_INVALID_ARGUMENT, "{error}");
    });
    stop(daemon, &directory, result);
}

/// The daemon to test: $TIDEPOOLD, else this checkout's release build.
fn tidepoold() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("TIDEPOOLD").map(PathBuf::from).unwrap_or_else(|| root.join(".build/release/tidepoold"))
}

/// Stops a test's daemon (SIGTERM), removes its directory, and fails as the test body did, or
/// if the daemon did not exit 0.
fn stop(mut daemon: std::process::Child, directory: &std::path::Path, result: std::thread::Result<()>) {
    let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
    let status = daemon.wait().unwrap();
    let _ = std::fs::remove_dir_all(directory);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(status.success(), "tidepoold exited with {status}");
}
