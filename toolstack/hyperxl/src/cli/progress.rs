//! Pull progress on a terminal, in the style of `docker pull`: one line per layer
//! (`Waiting`, a bar with bytes while `Downloading`, `Download complete`, `Already
//! exists`), then a spinner while the read-only disk is built. Drawn with `indicatif`
//! (its `MultiProgress` redraws many bars in place from many download threads, rate-
//! limited, and gives up drawing when stderr is not a terminal); chosen over our own
//! escape-code drawing for exactly that.
//!
//! Only a terminal gets progress: [`observer`] returns `None` when stderr is a pipe or a
//! file, or with `-q`, so logs and scripts see no progress lines at all.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperxl_image::digest::Digest;
use hyperxl_image::pull::PullObserver;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The observer for a pull: drawn on stderr when it is a terminal and `quiet` is off.
pub fn observer(quiet: bool) -> Option<Arc<dyn PullObserver>> {
    (!quiet && std::io::stderr().is_terminal())
        .then(|| Arc::new(TerminalPull::new(ProgressDrawTarget::stderr())) as _)
}

/// A spinner with `what` and the time spent, on stderr when it is a terminal and
/// `quiet` is off (long work with no byte count: a `load`, a disk build).
pub fn spinner(quiet: bool, what: &str) -> Option<ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let s = ProgressBar::new_spinner();
    s.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
    );
    s.set_message(what.to_string());
    s.enable_steady_tick(Duration::from_millis(120));
    Some(s)
}

/// The first 12 hex digits of a layer's digest, as Docker names layers.
fn short(d: &Digest) -> String {
    d.hex().chars().take(12).collect()
}

/// Docker-style pull progress drawn with `indicatif`.
#[derive(Debug)]
struct TerminalPull {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    disk: Mutex<Option<ProgressBar>>,
}

impl TerminalPull {
    fn new(target: ProgressDrawTarget) -> TerminalPull {
        TerminalPull {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            disk: Mutex::new(None),
        }
    }

    fn bar(&self, d: &Digest) -> Option<ProgressBar> {
        self.bars.lock().expect("not poisoned").get(d).cloned()
    }
}

fn text_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}: {msg}").expect("a valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix}: {msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}

impl PullObserver for TerminalPull {
    fn layers(&self, layers: &[(Digest, u64, bool)]) {
        let mut bars = self.bars.lock().expect("not poisoned");
        for (d, size, present) in layers {
            if bars.contains_key(d) {
                continue; // an image may list one layer twice
            }
            let bar = self.multi.add(ProgressBar::new(*size));
            bar.set_style(text_style());
            bar.set_prefix(short(d));
            if *present {
                bar.finish_with_message("Already exists");
            } else {
                bar.set_message("Waiting");
            }
            bars.insert(d.clone(), bar);
        }
    }

    fn layer_started(&self, layer: &Digest) {
        if let Some(bar) = self.bar(layer) {
            bar.set_style(bar_style());
            bar.set_position(0);
            bar.set_message("Downloading");
        }
    }

    fn layer_bytes(&self, layer: &Digest, n: u64) {
        if let Some(bar) = self.bar(layer) {
            bar.inc(n);
        }
    }

    fn layer_done(&self, layer: &Digest) {
        if let Some(bar) = self.bar(layer) {
            bar.set_style(text_style());
            bar.finish_with_message("Download complete");
        }
    }

    fn building_disk(&self) {
        let spinner = self.multi.add(ProgressBar::new_spinner());
        spinner.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
        );
        spinner.set_message("Building the read-only disk");
        spinner.enable_steady_tick(Duration::from_millis(120));
        *self.disk.lock().expect("not poisoned") = Some(spinner);
    }

    fn finished(&self) {
        if let Some(spinner) = self.disk.lock().expect("not poisoned").take() {
            spinner.set_style(
                ProgressStyle::with_template("Disk built in {elapsed}").expect("a valid template"),
            );
            spinner.finish();
        }
        // A failed pull leaves its unfinished layers where they stopped, not as bars.
        for bar in self.bars.lock().expect("not poisoned").values() {
            if !bar.is_finished() {
                bar.set_style(text_style());
                bar.abandon();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;

    /// A terminal that keeps the text last drawn on it, line by line.
    #[derive(Debug, Default, Clone)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            let mut lines = self.0.lock().unwrap();
            let keep = lines.len().saturating_sub(n);
            lines.truncate(keep);
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_string());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            let mut lines = self.0.lock().unwrap();
            match lines.last_mut() {
                Some(l) => l.push_str(s),
                None => lines.push(s.to_string()),
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            if let Some(l) = self.0.lock().unwrap().last_mut() {
                l.clear();
            }
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn every_layer_gets_its_own_line_in_docker_style() {
        let screen = Screen::default();
        let p = TerminalPull::new(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        let (a, b, c) = (digest('a'), digest('b'), digest('c'));
        p.layers(&[
            (a.clone(), 100, true),
            (b.clone(), 2048, false),
            (c.clone(), 10, false),
        ]);
        p.layer_started(&b);
        p.layer_bytes(&b, 1024);
        p.layer_done(&c);
        p.multi.clear().ok();
        // Force a final draw of every bar as it stands.
        for bar in p.bars.lock().unwrap().values() {
            bar.tick();
        }
        let text = screen.0.lock().unwrap().join("\n");
        assert!(text.contains("aaaaaaaaaaaa: Already exists"), "{text}");
        assert!(text.contains("bbbbbbbbbbbb: Downloading ["), "{text}");
        assert!(text.contains("1.00 KiB/2.00 KiB"), "{text}");
        assert!(text.contains("cccccccccccc: Download complete"), "{text}");
    }

    #[test]
    fn a_pipe_or_quiet_gets_no_observer() {
        assert!(observer(true).is_none());
        // Under `cargo test` stderr is captured or a pipe in CI; when it is a terminal,
        // only `quiet` can be checked.
        if !std::io::stderr().is_terminal() {
            assert!(observer(false).is_none());
        }
    }
}
