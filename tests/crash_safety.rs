//! `kill -9` at random moments of a training run (mid-save included) never leaves a damaged
//! checkpoint: whatever `NAME-latest` is on disk after each kill loads and resumes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

fn write_corpus(dir: &Path) {
    let para = "KING:\nWhat say you to this, my lords of the north?\n\
QUEEN:\nNothing, my liege, but that the night is long.\n\n";
    std::fs::write(dir.join("c.txt"), para.repeat(200)).unwrap();
}

#[test]
fn kill_dash_nine_never_corrupts_the_latest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_corpus(d);
    let latest = d.join("checkpoints/c-latest.safetensors");
    let mut rng = rand_pcg::Pcg32::seed_from_u64(42);
    let mut loaded = 0;
    let kills = 25;
    for round in 0..kills {
        // Every step saves, so kills land in saves often; later rounds resume the run.
        let mut args = vec![
            "train",
            "--corpus",
            "c.txt",
            "--hidden",
            "48",
            "--embed",
            "16",
            "--batch",
            "4",
            "--seq",
            "16",
            "--save-every",
            "1",
            "--eval-every",
            "5",
            "--max-steps",
            "100000",
            "--quiet",
        ];
        let resume = latest.to_string_lossy().into_owned();
        if latest.exists() {
            args.extend_from_slice(&["--resume", &resume]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_quill"))
            .args(&args)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(rng.random_range(20..400));
        let start = Instant::now();
        while start.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        if latest.exists() {
            match quill::train::checkpoint::load_resumable(&latest) {
                Ok(r) => {
                    assert!(r
                        .loaded
                        .model
                        .params
                        .slices()
                        .iter()
                        .all(|s| s.iter().all(|v| v.is_finite())));
                    loaded += 1;
                }
                Err(e) => panic!("round {round}: checkpoint left by kill -9 does not load: {e}"),
            }
        }
    }
    assert!(
        loaded >= kills / 2,
        "only {loaded} of {kills} rounds had a checkpoint to check"
    );
}

#[test]
fn sigint_finishes_the_step_saves_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_corpus(d);
    let child = Command::new(env!("CARGO_BIN_EXE_quill"))
        .args([
            "train",
            "--corpus",
            "c.txt",
            "--hidden",
            "32",
            "--embed",
            "8",
            "--batch",
            "4",
            "--seq",
            "16",
            "--save-every",
            "5",
            "--eval-every",
            "0",
            "--max-steps",
            "1000000",
            "--quiet",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The handler is installed before training starts; the first periodic save shows that
    // training runs. Wait for that event (bounded), not for a clock.
    let latest = d.join("checkpoints/c-latest.safetensors");
    let t0 = Instant::now();
    while !latest.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "training never wrote its first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped by request"), "{err}");
    let r = quill::train::checkpoint::load_resumable(&d.join("checkpoints/c-latest.safetensors"))
        .unwrap();
    assert!(r.meta.progress.step > 0);
}
