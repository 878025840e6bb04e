//! The TUI drawn into ratatui's `TestBackend`: the main screen, token colours, the help
//! popup, narrow and tiny terminals, and the whole event loop with a real worker.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use rand::SeedableRng;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Modifier;
use ratatui::Terminal;

use quill::nn::model::{Model, ModelConfig};
use quill::tokenizer::{Tokenizer, TokenizerKind, TokenizerOptions};
use quill::tui::app::Activity;
use quill::tui::ui::{self, prob_colour, HELP};
use quill::tui::{self as tui, App, AppEvent, ModelInfo, Options, Settings, WorkerEvent};

fn info() -> ModelInfo {
    ModelInfo {
        name: "tiny".into(),
        path: PathBuf::from("checkpoints/tiny.safetensors"),
        kind: TokenizerKind::Char,
        params: 1234,
        vocab: 30,
    }
}

fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::draw(f, app)).unwrap();
    t
}

fn lines(t: &Terminal<TestBackend>) -> Vec<String> {
    let buf = t.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf.cell((x, y)).unwrap().symbol())
                .collect()
        })
        .collect()
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn tokens(app: &mut App, pieces: &[(&str, f32)]) {
    for &(text, prob) in pieces {
        app.handle_worker(WorkerEvent::Token {
            run: app.run_id(),
            text: text.into(),
            prob,
            dist: None,
        });
    }
}

#[test]
fn main_screen_shows_text_parameters_distribution_and_status() {
    let mut app = App::new(info(), Options::default());
    app.prompt.set_text("ROMEO:");
    let s = lines(&draw(&app, 100, 30));
    assert!(s[0].starts_with("┌ tiny ─"), "{}", s[0]);
    assert!(s[1].contains("Press Enter to generate"), "{}", s[1]);
    for row in [
        "│ temperature 0.80        t T  │",
        "│ top-k       off         k K  │",
        "│ top-p       off         p P  │",
        "│ min-p       off         m M  │",
        "│ repetition  off         a A  │",
        "│ frequency   off         f F  │",
        "│ presence    off         b B  │",
        "│ utf-8 guard on          8    │",
        "│ length      1000        l L  │",
        "│ seed        0           n N  │",
        "│ speed       100/s       [ ]  │",
    ] {
        assert!(s.iter().any(|l| l.ends_with(row)), "missing {row:?}");
    }
    assert!(s[25].starts_with("┌ Prompt · Tab to edit"), "{}", s[25]);
    assert!(s[26].starts_with("│ROMEO:   "), "{}", s[26]);
    assert!(
        s[29].starts_with(" tiny │ char │ 1.2K params │ 0 tok/s │ ○ idle"),
        "{}",
        s[29]
    );
    assert!(s[29].ends_with(" ? help "), "{}", s[29]);

    // Generating: the prompt, then the tokens, wrapped in the 66-column text area.
    app.handle_key(key('g'));
    app.handle_key(key('T'));
    let words = "But soft what light through yonder window breaks ";
    let pieces: Vec<(&str, f32)> = words
        .split_inclusive(' ')
        .map(|w| (w, 0.9))
        .chain([("It is the east", 0.05)])
        .collect();
    tokens(&mut app, &pieces);
    app.handle_worker(WorkerEvent::Dist {
        run: app.run_id(),
        dist: vec![("e".into(), 0.5), ("␣".into(), 0.25)],
    });
    let t = draw(&app, 100, 30);
    let s = lines(&t);
    assert!(
        s[1].starts_with("│ROMEO:But soft what light through yonder window breaks It is the  │"),
        "{}",
        s[1]
    );
    assert!(s[2].starts_with("│east "), "{}", s[2]);
    assert!(s
        .iter()
        .any(|l| l.ends_with("│ temperature 0.85        t T  │")));
    assert!(s.iter().any(|l| l.contains("Next token · T 0.85")));
    // The other controls show their values once set.
    for c in ['M', 'A', 'F', 'b', 'B'] {
        app.handle_key(key(c));
    }
    let s2 = lines(&draw(&app, 100, 30));
    for row in [
        "│ min-p       0.01        m M  │",
        "│ repetition  1.05        a A  │",
        "│ frequency   0.10        f F  │",
        "│ presence    0.10        b B  │",
    ] {
        assert!(
            s2.iter().any(|l| l.ends_with(row)),
            "missing {row:?} in\n{}",
            s2.join("\n")
        );
    }
    assert!(
        s.iter()
            .any(|l| l.ends_with("│ e      ███████         50.0% │")),
        "{}",
        s.join("\n")
    );
    assert!(s[29].contains("● generating"), "{}", s[29]);
    // Prompt in bold, generated text in the default colour until colours are on.
    let buf = t.backend().buffer();
    assert!(buf.cell((1, 1)).unwrap().modifier.contains(Modifier::BOLD));
    assert_eq!(buf.cell((7, 1)).unwrap().fg, ratatui::style::Color::Reset);
    app.handle_key(key('v'));
    let t = draw(&app, 100, 30);
    let buf = t.backend().buffer();
    assert_eq!(buf.cell((7, 1)).unwrap().fg, prob_colour(0.9));
    assert_eq!(buf.cell((2, 2)).unwrap().fg, prob_colour(0.05));
    assert_ne!(prob_colour(0.9), prob_colour(0.05));
    assert!(lines(&t)[0].starts_with("┌ tiny · colours "));
}

#[test]
fn u_underlines_generated_text_copied_from_the_corpus() {
    let mut app = App::new(info(), Options::default());
    app.prompt.set_text("ROMEO:");
    app.handle_key(key('g'));
    tokens(
        &mut app,
        &[("But soft, what light", 0.5), (" is this? No.", 0.5)],
    );
    let corpus = "ROMEO:\nBut soft, what light through yonder window breaks?\n";
    let index = quill::copies::CopyIndex::build(
        vec![(PathBuf::from("corpus.txt"), corpus.into())],
        "f".into(),
    )
    .unwrap();
    // `u` asks the worker for the model's index; its answer turns the underlining on.
    app.handle_key(key('u'));
    app.handle_worker(WorkerEvent::Copies {
        checkpoint: info().path,
        result: Ok((
            tui::worker::SharedIndex(std::sync::Arc::new(index)),
            "built".into(),
        )),
    });
    let t = draw(&app, 100, 30);
    let s = lines(&t);
    assert!(s[0].starts_with("┌ tiny · copies "), "{}", s[0]);
    assert!(
        s[1].starts_with("│ROMEO:But soft, what light is this? No."),
        "{}",
        s[1]
    );
    let buf = t.backend().buffer();
    let underlined = |x: u16| {
        buf.cell((x, 1))
            .unwrap()
            .modifier
            .contains(Modifier::UNDERLINED)
    };
    // "But soft, what light " (columns 7..28) is in the corpus; the prompt and the rest are not.
    assert!((7..28).all(underlined));
    assert!(!(1..7).any(underlined));
    assert!(!(28..40).any(underlined));
    // `u` again: nothing underlined.
    app.handle_key(key('u'));
    let t = draw(&app, 100, 30);
    let buf = t.backend().buffer();
    assert!(!(1..40).any(|x| buf
        .cell((x, 1))
        .unwrap()
        .modifier
        .contains(Modifier::UNDERLINED)));
}

#[test]
fn long_text_follows_the_end() {
    let mut app = App::new(info(), Options::default());
    app.handle_key(key('g'));
    let many: Vec<String> = (0..200).map(|i| format!("line {i}\n")).collect();
    let pieces: Vec<(&str, f32)> = many.iter().map(|s| (s.as_str(), 0.5)).collect();
    tokens(&mut app, &pieces);
    let s = lines(&draw(&app, 100, 30));
    // 23 text rows: the last one is the empty line after "line 199".
    assert!(s[22].starts_with("│line 199 "), "{}", s[22]);
    assert!(s[23].starts_with("│     "), "{}", s[23]);
    // Scrolling up stops following, and says so.
    app.handle_key(KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE));
    let s = lines(&draw(&app, 100, 30));
    assert!(s[22].starts_with("│line 177 "), "{}", s[22]);
    assert!(s[24].contains("End follows the text"), "{}", s[24]);
}

#[test]
fn help_popup_lists_every_key_at_80x24() {
    let mut app = App::new(info(), Options::default());
    app.handle_key(key('?'));
    let s = lines(&draw(&app, 80, 24));
    let screen = s.join("\n");
    assert!(screen.contains("Keys · any key closes"), "{screen}");
    for (section, keys) in HELP {
        assert!(screen.contains(section), "missing section {section}");
        for (k, what) in keys.iter() {
            let row = format!("{k:<11}{what}");
            assert!(screen.contains(&row), "missing {row:?} in\n{screen}");
        }
    }
    // Any key closes it.
    app.handle_key(key('x'));
    assert!(!lines(&draw(&app, 80, 24)).join("\n").contains("Keys ·"));
}

#[test]
fn narrow_terminal_gets_a_parameter_strip() {
    let app = App::new(info(), Options::default());
    let s = lines(&draw(&app, 60, 16));
    assert!(
        s.iter()
            .any(|l| l.starts_with(" T 0.80 · k off · p off · len 1000 · seed 0 · 100/s")),
        "{}",
        s.join("\n")
    );
    assert!(!s.join("\n").contains("Next token"));
    // The status bar keeps the state visible when it has to drop details.
    assert!(s[15].contains("○ idle"), "{}", s[15]);
}

#[test]
fn tiny_terminal_shows_a_message() {
    let app = App::new(info(), Options::default());
    let t = draw(&app, 40, 10);
    let blank = " ".repeat(40);
    assert_eq!(
        lines(&t),
        [
            &blank,
            &blank,
            &blank,
            "           Terminal too small           ",
            "                  40×10                 ",
            "       quill needs at least 50×12       ",
            " Enlarge the window, or press q to quit.",
            &blank,
            &blank,
            &blank,
        ]
    );
    let title = t.backend().buffer().cell((11, 3)).unwrap();
    assert!(title.modifier.contains(Modifier::BOLD));
    // Even smaller sizes draw without panicking.
    for (w, h) in [(1, 1), (0, 0), (49, 30), (200, 11), (50, 12)] {
        draw(&app, w, h);
    }
}

fn tiny_model() -> (Model<f32>, Tokenizer) {
    let tok = Tokenizer::train(
        TokenizerKind::Char,
        "abcdefgh ijkl\nmnop",
        &TokenizerOptions::for_kind(TokenizerKind::Char),
    )
    .unwrap();
    let cfg = ModelConfig {
        vocab: tok.vocab_size(),
        embed: 4,
        hidden: 8,
        layers: 1,
        dropout: 0.0,
        tie_weights: false,
    };
    let mut rng = rand_pcg::Pcg32::seed_from_u64(5);
    (Model::new(cfg, &mut rng).unwrap(), tok)
}

#[test]
fn event_loop_with_a_real_worker() {
    let (model, tok) = tiny_model();
    let info = ModelInfo::new(
        std::path::Path::new("mem/tiny.safetensors"),
        &model.config,
        &tok,
    );
    let (tx, rx) = mpsc::channel();
    // The driver waits for the run to finish (the worker says so), not for a clock.
    let (done_tx, done_rx) = mpsc::channel();
    let mut sink = tui::worker_sink(tx.clone());
    let worker = tui::WorkerHandle::spawn(model, tok, move |e| {
        let finished = matches!(e, tui::WorkerEvent::Finished { .. });
        let ok = sink(e);
        if finished {
            let _ = done_tx.send(());
        }
        ok
    });
    let opts = Options {
        settings: Settings {
            length: Some(30),
            speed: None,
            ..Settings::default()
        },
        prompt: "ab".into(),
        ..Options::default()
    };
    let mut app = App::new(info, opts);
    let mut term = Terminal::new(TestBackend::new(100, 30)).unwrap();
    let driver = std::thread::spawn(move || {
        for c in ['g', 'T', 'v'] {
            tx.send(AppEvent::Input(Event::Key(key(c)))).unwrap();
        }
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the run finishes");
        tx.send(AppEvent::Input(Event::Resize(100, 30))).unwrap();
        tx.send(AppEvent::Quit).unwrap();
    });
    tui::run(&mut term, &mut app, &worker, &rx).unwrap();
    driver.join().unwrap();
    worker.shutdown();
    assert!(app.should_quit);
    assert_eq!(app.transcript.tokens(), 30);
    assert_eq!(app.activity, Activity::Idle);
    assert_eq!(app.history.len(), 1);
    assert_eq!(app.dist.len(), 10);
    // The last frame shows the whole text and the new temperature.
    let s = lines(&term);
    let want: Vec<&str> = app
        .transcript
        .text()
        .split('\n')
        .map(str::trim_end)
        .collect();
    let got: Vec<&str> = s[1..1 + want.len()]
        .iter()
        .map(|l| {
            l.trim_start_matches('│')
                .split('│')
                .next()
                .unwrap()
                .trim_end()
        })
        .collect();
    assert_eq!(got, want);
    assert!(s.iter().any(|l| l.contains("temperature 0.85")));
    assert!(s[29].contains("○ idle"), "{}", s[29]);
}
