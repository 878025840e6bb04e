//! A small multi-line text editor (the prompt, and the one-line path field of the save
//! dialog): lines of text, a cursor, insertion, deletion, movement and paste.

/// Editable text with a cursor. The cursor column counts chars, not bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextArea {
    lines: Vec<String>,
    row: usize,
    col: usize,
    single_line: bool,
}

impl Default for TextArea {
    fn default() -> Self {
        Self::new()
    }
}

fn byte_at(s: &str, col: usize) -> usize {
    s.char_indices().nth(col).map_or(s.len(), |(i, _)| i)
}

impl TextArea {
    /// An empty multi-line editor.
    pub fn new() -> Self {
        TextArea {
            lines: vec![String::new()],
            row: 0,
            col: 0,
            single_line: false,
        }
    }

    /// A one-line editor holding `text` (line breaks in pastes become spaces), cursor at the end.
    pub fn single_line(text: &str) -> Self {
        let mut t = TextArea {
            single_line: true,
            ..Self::new()
        };
        t.insert_str(text);
        t
    }

    /// The text, lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The lines.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Cursor as (row, column in chars).
    pub fn cursor(&self) -> (usize, usize) {
        (self.row, self.col)
    }

    /// Replaces the text; the cursor goes to its end.
    pub fn set_text(&mut self, text: &str) {
        self.clear();
        self.insert_str(text);
    }

    /// Empties the editor.
    pub fn clear(&mut self) {
        self.lines = vec![String::new()];
        self.row = 0;
        self.col = 0;
    }

    /// Inserts one char at the cursor (`\n` splits the line; `\r` is ignored).
    pub fn insert_char(&mut self, c: char) {
        match c {
            '\r' => {}
            '\n' if self.single_line => self.insert_char(' '),
            '\n' => {
                let line = &mut self.lines[self.row];
                let rest = line.split_off(byte_at(line, self.col));
                self.row += 1;
                self.col = 0;
                self.lines.insert(self.row, rest);
            }
            c => {
                let line = &mut self.lines[self.row];
                line.insert(byte_at(line, self.col), c);
                self.col += 1;
            }
        }
    }

    /// Inserts text at the cursor (a paste): CRLF and CR line ends become `\n`.
    pub fn insert_str(&mut self, s: &str) {
        let s = s.replace("\r\n", "\n").replace('\r', "\n");
        for c in s.chars() {
            self.insert_char(c);
        }
    }

    /// Deletes the char before the cursor, joining lines at a line start.
    pub fn backspace(&mut self) {
        if self.col > 0 {
            let line = &mut self.lines[self.row];
            self.col -= 1;
            line.remove(byte_at(line, self.col));
        } else if self.row > 0 {
            let line = self.lines.remove(self.row);
            self.row -= 1;
            self.col = self.lines[self.row].chars().count();
            self.lines[self.row].push_str(&line);
        }
    }

    /// Deletes the char under the cursor, joining lines at a line end.
    pub fn delete(&mut self) {
        let len = self.lines[self.row].chars().count();
        if self.col < len {
            let line = &mut self.lines[self.row];
            line.remove(byte_at(line, self.col));
        } else if self.row + 1 < self.lines.len() {
            let next = self.lines.remove(self.row + 1);
            self.lines[self.row].push_str(&next);
        }
    }

    fn line_len(&self) -> usize {
        self.lines[self.row].chars().count()
    }

    /// Moves left, to the end of the previous line at a line start.
    pub fn left(&mut self) {
        if self.col > 0 {
            self.col -= 1;
        } else if self.row > 0 {
            self.row -= 1;
            self.col = self.line_len();
        }
    }

    /// Moves right, to the start of the next line at a line end.
    pub fn right(&mut self) {
        if self.col < self.line_len() {
            self.col += 1;
        } else if self.row + 1 < self.lines.len() {
            self.row += 1;
            self.col = 0;
        }
    }

    /// Moves up one line (column clamped to the line).
    pub fn up(&mut self) {
        if self.row > 0 {
            self.row -= 1;
            self.col = self.col.min(self.line_len());
        }
    }

    /// Moves down one line (column clamped to the line).
    pub fn down(&mut self) {
        if self.row + 1 < self.lines.len() {
            self.row += 1;
            self.col = self.col.min(self.line_len());
        }
    }

    /// Moves to the start of the line.
    pub fn home(&mut self) {
        self.col = 0;
    }

    /// Moves to the end of the line.
    pub fn end(&mut self) {
        self.col = self.line_len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_newlines_and_deleting() {
        let mut t = TextArea::new();
        t.insert_str("ab\ncd");
        assert_eq!(t.text(), "ab\ncd");
        assert_eq!(t.cursor(), (1, 2));
        t.home();
        t.backspace(); // joins the lines
        assert_eq!(t.text(), "abcd");
        assert_eq!(t.cursor(), (0, 2));
        t.insert_char('é');
        t.insert_char('\n');
        assert_eq!(t.lines(), ["abé", "cd"]);
        t.up();
        t.end();
        t.delete(); // joins again
        assert_eq!(t.text(), "abécd");
        t.backspace();
        assert_eq!(t.text(), "abcd");
        t.left();
        t.backspace();
        assert_eq!(t.text(), "bcd");
    }

    #[test]
    fn paste_normalises_line_ends_and_moves_across_lines() {
        let mut t = TextArea::new();
        t.insert_str("one\r\ntwo\rthree");
        assert_eq!(t.lines(), ["one", "two", "three"]);
        t.up();
        assert_eq!(t.cursor(), (1, 3));
        t.right();
        assert_eq!(t.cursor(), (2, 0));
        t.left();
        assert_eq!(t.cursor(), (1, 3));
        t.down();
        t.down();
        assert_eq!(t.cursor(), (2, 3));
        t.clear();
        assert_eq!(t.text(), "");
        t.backspace();
        t.delete();
        t.left();
        assert_eq!(t.cursor(), (0, 0));
    }

    #[test]
    fn single_line_turns_breaks_into_spaces() {
        let mut t = TextArea::single_line("samples/a.txt");
        t.insert_str("\nb");
        assert_eq!(t.text(), "samples/a.txt b");
        assert_eq!(t.lines().len(), 1);
    }
}
