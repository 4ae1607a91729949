//! One line of `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`), as `ps` reads it: the command name, which
//! may hold spaces and parentheses, then the numbered fields of proc(5) after it.

/// A parsed stat line: its command name and fields 3 (state) onwards.
pub struct ProcStat<'a> {
    pub comm: &'a str,
    after_comm: Vec<&'a str>,
}

impl<'a> ProcStat<'a> {
    /// `pid (comm) state ppid ...`: the fields are counted from the last `)`, so a name holding `) ` cannot shift
    /// them.
    pub fn parse(line: &'a str) -> Option<ProcStat<'a>> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        Some(ProcStat {
            comm: line.get(open + 1..close)?,
            after_comm: line.get(close + 1..)?.split_whitespace().collect(),
        })
    }

    /// Field `n` as proc(5) numbers them (3 is the state, 4 the parent's pid, 14 utime ...).
    pub fn field(&self, n: usize) -> Option<&'a str> {
        self.after_comm.get(n.checked_sub(3)?).copied()
    }

    /// Field `n` as a number.
    pub fn number(&self, n: usize) -> Option<u64> {
        self.field(n)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_from_the_end_of_the_name() {
        let stat = ProcStat::parse("4242 (a) b (c) S 1 4242 4242 0 -1 0 0 0 0 0 7 5").unwrap();
        assert_eq!(stat.comm, "a) b (c");
        assert_eq!(
            (stat.field(3), stat.number(4), stat.number(14), stat.number(15)),
            (Some("S"), Some(1), Some(7), Some(5))
        );
        assert_eq!((stat.field(2), stat.field(16)), (None, None));
        assert!(ProcStat::parse("4242 (cut").is_none());
    }
}
