//! Source positions of a scenario file: which line and column each YAML node and key sits at, so that errors
//! found after deserializing still point into the file. Also the structural checks that must run before serde
//! sees the text: one document, bounded nesting, unique keys, plain keys.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::scenario::plan::Location;

/// Deepest nesting of maps and lists a scenario may use; real scenarios need about 6.
pub const MAX_DEPTH: usize = 64;

/// Most nodes (keys and values) a file may hold once its `*aliases` are expanded; real scenarios hold a few
/// hundred. Counted before serde expands anything, so an alias bomb costs neither time nor memory.
pub const MAX_EXPANDED_NODES: u64 = 100_000;

/// Most bytes of text (keys and scalar values) a file may hold once its `*aliases` are expanded: four times the
/// largest file. Without aliases a file holds at most its own size; a few aliases of a long string cost no more
/// nodes than aliases of a short one, but each copy is materialised by serde.
pub const MAX_EXPANDED_BYTES: u64 = 4 * 1024 * 1024;

/// A path to a node as serde_norway prints it: `client[2].expect.result`, `faults[0].from`; empty = the top.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePath {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Key(String),
    Index(usize),
}

impl NodePath {
    /// The top-level map.
    pub fn root() -> NodePath {
        NodePath::default()
    }

    /// The value under `key` of this map.
    pub fn key(&self, key: &str) -> NodePath {
        let mut path = self.clone();
        path.segments.push(Segment::Key(key.to_string()));
        path
    }

    /// Item `index` (0-based) of this list.
    pub fn index(&self, index: usize) -> NodePath {
        let mut path = self.clone();
        path.segments.push(Segment::Index(index));
        path
    }

    /// The enclosing node; the top stays the top.
    pub fn parent(&self) -> NodePath {
        let mut path = self.clone();
        path.segments.pop();
        path
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The last map key of the path, if the path ends in one.
    pub fn last_key(&self) -> Option<&str> {
        match self.segments.last() {
            Some(Segment::Key(key)) => Some(key),
            _ => None,
        }
    }
}

impl fmt::Display for NodePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Where a node is: the node itself, and for a map value the key that introduces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodePosition {
    value: Location,
    key: Option<Location>,
}

/// Positions of every node of a scenario file by [`NodePath`], built from yaml-rust2's marked events.
///
/// Stored as a tree (a node's children by key or index), not by full path: a path repeats every key above it, so
/// a long key over many nodes (`? <500 KB key>` holding a long list) would cost gigabytes that way.
#[derive(Debug, Clone, Default)]
pub struct SourceIndex {
    /// By node id; the top-level node is id 0.
    nodes: Vec<NodePosition>,
    /// (parent id, key or index) -> child id.
    children: HashMap<(usize, Segment), usize>,
    first_alias: Option<Location>,
}

/// A structural problem found while indexing: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructureError {
    pub location: Location,
    pub message: String,
    /// The text is not YAML at all (as opposed to YAML that a scenario may not use).
    pub syntax: bool,
}

enum Frame {
    Map { node: usize, pending_key: Option<(String, Location)>, keys: HashMap<String, Location>, first_key_seen: bool },
    Seq { node: usize, next: usize },
}

/// How much of the file serde will materialise: nodes, and bytes of scalar text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Size {
    nodes: u64,
    bytes: u64,
}

impl Size {
    fn add(&mut self, other: Size) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }

    fn since(self, before: Size) -> Size {
        Size { nodes: self.nodes - before.nodes, bytes: self.bytes - before.bytes }
    }
}

/// Counts nodes and text as serde will see them, with every alias replaced by a copy of its anchor.
#[derive(Default)]
struct Expansion {
    total: Size,
    anchor_sizes: HashMap<usize, Size>,
    /// Anchor id and `total` before each open map or list.
    open: Vec<(usize, Size)>,
}

impl Expansion {
    fn scalar(&mut self, anchor: usize, len: usize) {
        let size = Size { nodes: 1, bytes: len as u64 };
        self.total.add(size);
        if anchor != 0 {
            self.anchor_sizes.insert(anchor, size);
        }
    }

    fn start(&mut self, anchor: usize) {
        self.open.push((anchor, self.total));
        self.total.nodes += 1;
    }

    fn end(&mut self) {
        if let Some((anchor, before)) = self.open.pop() {
            if anchor != 0 {
                self.anchor_sizes.insert(anchor, self.total.since(before));
            }
        }
    }

    /// The total once the alias is expanded.
    fn alias(&mut self, anchor: usize) -> Size {
        let copy = self.anchor_sizes.get(&anchor).copied().unwrap_or(Size { nodes: 1, bytes: 0 });
        self.total.add(copy);
        self.total
    }
}

fn too_deep(location: Location) -> StructureError {
    StructureError {
        location,
        message: format!("nested more than {MAX_DEPTH} levels deep; a scenario needs only a few levels"),
        syntax: false,
    }
}

fn location(marker: &Marker) -> Location {
    Location { line: marker.line(), column: marker.col() + 1 }
}

impl SourceIndex {
    /// Indexes `text`, refusing what serde must never see: syntax errors, several documents, nesting deeper
    /// than [`MAX_DEPTH`], duplicate keys and keys that are maps or lists.
    pub fn build(text: &str) -> Result<SourceIndex, StructureError> {
        let mut index = SourceIndex::default();
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        let mut documents = 0;
        let mut expansion = Expansion::default();
        loop {
            let (event, marker) = parser.next_token().map_err(|e| {
                // The scanner reads ahead of the events, so 255 open brackets stop it before MAX_DEPTH is seen.
                if e.info() == "recursion limit exceeded" {
                    return too_deep(location(e.marker()));
                }
                StructureError {
                    location: location(e.marker()),
                    message: format!("not valid YAML: {}", e.info()),
                    syntax: true,
                }
            })?;
            let here = location(&marker);
            match event {
                Event::StreamEnd => return Ok(index),
                Event::DocumentStart => {
                    documents += 1;
                    if documents > 1 {
                        return Err(StructureError {
                            location: here,
                            message: "a scenario file holds exactly one YAML document; remove the second `---` \
                                      or move it into its own file"
                                .into(),
                            syntax: false,
                        });
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    expansion.end();
                }
                Event::Scalar(text, style, anchor, _) => {
                    expansion.scalar(anchor, text.len());
                    if let Some(Frame::Map { pending_key: pending @ None, keys, node, first_key_seen }) =
                        stack.last_mut()
                    {
                        if let Some(first) = keys.get(&text) {
                            return Err(StructureError {
                                location: here,
                                message: format!(
                                    "duplicate key \"{text}\" (first given at {first}); each key may appear once per map"
                                ),
                                syntax: false,
                            });
                        }
                        if !*first_key_seen {
                            *first_key_seen = true;
                            index.fix_block_map_start(*node, here);
                        }
                        keys.insert(text.clone(), here);
                        *pending = Some((text, here));
                        continue;
                    }
                    let empty = text.is_empty() && style == TScalarStyle::Plain;
                    index.add_value(&mut stack, here, empty);
                }
                Event::Alias(anchor) => {
                    index.reject_complex_key(&stack, here)?;
                    let expanded = expansion.alias(anchor);
                    let too_much = if expanded.nodes > MAX_EXPANDED_NODES {
                        Some(format!("more than {MAX_EXPANDED_NODES} values"))
                    } else if expanded.bytes > MAX_EXPANDED_BYTES {
                        Some(format!("more than {} MiB of text", MAX_EXPANDED_BYTES / (1024 * 1024)))
                    } else {
                        None
                    };
                    if let Some(what) = too_much {
                        return Err(StructureError {
                            location: here,
                            message: format!(
                                "aliases (*name) expand this file to {what}; a scenario needs far fewer: write the \
                                 values out or use fewer aliases"
                            ),
                            syntax: false,
                        });
                    }
                    index.first_alias.get_or_insert(here);
                    index.add_value(&mut stack, here, false);
                }
                Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                    index.reject_complex_key(&stack, here)?;
                    expansion.start(anchor);
                    if stack.len() >= MAX_DEPTH {
                        return Err(too_deep(here));
                    }
                    let node = index.add_value(&mut stack, here, false);
                    stack.push(match event {
                        Event::MappingStart(..) => {
                            Frame::Map { node, pending_key: None, keys: HashMap::new(), first_key_seen: false }
                        }
                        _ => Frame::Seq { node, next: 0 },
                    });
                }
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            }
        }
    }

    fn reject_complex_key(&self, stack: &[Frame], here: Location) -> Result<(), StructureError> {
        match stack.last() {
            Some(Frame::Map { pending_key: None, .. }) => Err(StructureError {
                location: here,
                message: "map keys must be plain names, not lists, maps or *aliases".into(),
                syntax: false,
            }),
            _ => Ok(()),
        }
    }

    /// yaml-rust2 marks a block map at the end of its first key; the first key is where the map really starts.
    fn fix_block_map_start(&mut self, node: usize, first_key: Location) {
        if let Some(position) = self.nodes.get_mut(node) {
            if first_key < position.value {
                position.value = first_key;
            }
        }
    }

    /// Records a value node under its parent and returns its id; a node met again keeps its first position.
    fn add_value(&mut self, stack: &mut [Frame], here: Location, empty_scalar: bool) -> usize {
        let (parent, key) = match stack.last_mut() {
            None => (None, None),
            Some(Frame::Seq { node, next }) => {
                *next += 1;
                (Some((*node, Segment::Index(*next - 1))), None)
            }
            Some(Frame::Map { node, pending_key, .. }) => match pending_key.take() {
                Some((key, key_at)) => (Some((*node, Segment::Key(key))), Some(key_at)),
                // Cannot happen (a map key that is not a scalar is refused before): the map stands for it.
                None => return *node,
            },
        };
        // An empty value (`close:`) is marked at the next token, often lines below: its key is the better place.
        let value = match key {
            Some(key_at) if empty_scalar => key_at,
            _ => here,
        };
        let position = NodePosition { value, key };
        let Some(edge) = parent else {
            if self.nodes.is_empty() {
                self.nodes.push(position);
            }
            return 0;
        };
        let next_id = self.nodes.len();
        let id = *self.children.entry(edge).or_insert(next_id);
        if id == next_id {
            self.nodes.push(position);
        }
        id
    }

    /// Where the node at `path` starts, or its nearest indexed ancestor (nodes reached through an alias have
    /// no position of their own); `1:1` for the top.
    pub fn value(&self, path: &NodePath) -> Location {
        self.position(path).map(|node| node.value).unwrap_or(Location { line: 1, column: 1 })
    }

    /// Where the key introducing `path` is; the node itself when it is a list item or has no key.
    pub fn key(&self, path: &NodePath) -> Location {
        self.position(path).map(|node| node.key.unwrap_or(node.value)).unwrap_or(Location { line: 1, column: 1 })
    }

    /// Whether the file has a node at exactly `path`.
    pub fn contains(&self, path: &NodePath) -> bool {
        let (id, depth) = self.deepest(path);
        id.is_some() && depth == path.segments.len()
    }

    /// The first `*alias` of the file, where an alias-expansion error is best shown.
    pub fn first_alias(&self) -> Option<Location> {
        self.first_alias
    }

    fn position(&self, path: &NodePath) -> Option<NodePosition> {
        self.deepest(path).0.map(|id| self.nodes[id])
    }

    /// The deepest node on `path` that the file has, and how many segments of `path` lead to it.
    fn deepest(&self, path: &NodePath) -> (Option<usize>, usize) {
        if self.nodes.is_empty() {
            return (None, 0);
        }
        let mut id = 0;
        for (depth, segment) in path.segments.iter().enumerate() {
            match self.children.get(&(id, segment.clone())) {
                Some(child) => id = *child,
                None => return (Some(id), depth),
            }
        }
        (Some(id), path.segments.len())
    }
}

/// Line and column (1-based, in characters) of byte `offset` of `text`; used where only a byte offset is known.
pub fn location_of_offset(bytes: &[u8], offset: usize) -> Location {
    let before = &bytes[..offset.min(bytes.len())];
    let line_start = before.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    Location { line, column }
}

/// The byte offset of `at` in `text`, if the line and column exist (columns count characters, as in
/// [`location_of_offset`]).
pub fn offset_of_location(text: &str, at: Location) -> Option<usize> {
    let line_start = if at.line <= 1 { 0 } else { text.match_indices('\n').nth(at.line - 2).map(|(i, _)| i + 1)? };
    let line = &text[line_start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let column = at.column.checked_sub(1)?;
    let within = line.char_indices().map(|(i, _)| i).chain([line.len()]).nth(column)?;
    Some(line_start + within)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Location {
        Location { line, column }
    }

    const TEXT: &str = "\
description: |
  text
faults:
  - name: blackhole
    from: { after: client.connect }
client:
  - close
  - connect: { port: 9000 }
    expect:
      result: ok
  - accept:
server: []
";

    #[test]
    fn indexes_values_and_keys() {
        let index = SourceIndex::build(TEXT).unwrap();
        let root = NodePath::root();
        assert_eq!(index.value(&root), at(1, 1));
        assert_eq!(index.key(&root.key("description")), at(1, 1));
        assert_eq!(index.value(&root.key("description")), at(2, 3));
        let fault = root.key("faults").index(0);
        assert_eq!(index.value(&fault), at(4, 5));
        assert_eq!(index.value(&fault.key("name")), at(4, 11));
        assert_eq!(index.key(&fault.key("from")), at(5, 5));
        assert_eq!(index.value(&fault.key("from")), at(5, 11));
        assert_eq!(index.value(&fault.key("from").key("after")), at(5, 20));
        let client = root.key("client");
        assert_eq!(index.value(&client.index(0)), at(7, 5));
        assert_eq!(index.value(&client.index(1)), at(8, 5));
        assert_eq!(index.value(&client.index(1).key("connect").key("port")), at(8, 22));
        assert_eq!(index.value(&client.index(1).key("expect")), at(10, 7));
        assert_eq!(index.key(&client.index(1).key("expect").key("result")), at(10, 7));
        assert_eq!(index.value(&client.index(1).key("expect").key("result")), at(10, 15));
        assert_eq!(index.value(&client.index(2).key("accept")), at(11, 5));
        assert_eq!(index.value(&root.key("server")), at(12, 9));
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let index = SourceIndex::build(TEXT).unwrap();
        let connect = NodePath::root().key("client").index(1).key("connect");
        assert_eq!(index.value(&connect.key("to")), index.value(&connect));
        assert!(!index.contains(&connect.key("to")));
        assert!(index.contains(&connect.key("port")));
    }

    #[test]
    fn keys_that_look_like_paths_are_their_own_nodes() {
        let index = SourceIndex::build("a.b: 1\na:\n  b: 2\n").unwrap();
        let root = NodePath::root();
        assert_eq!(index.value(&root.key("a.b")), at(1, 6));
        assert_eq!(index.value(&root.key("a").key("b")), at(3, 6));
        assert!(!index.contains(&root.key("a").key("c")));
    }

    #[test]
    fn a_long_key_is_stored_once_for_all_nodes_below_it() {
        // Found probing 1 MiB files: paths repeated a 10 KB key in each of 480000 list items, 5 GB in all.
        let key = "k".repeat(10_000);
        let text = format!("? {key}\n: [{}]\n", vec!["1"; 100_000].join(","));
        let index = SourceIndex::build(&text).unwrap();
        let list = NodePath::root().key(&key);
        assert_eq!(index.value(&list.index(99_999)), at(2, 4 + 2 * 99_999));
        let stored: usize = index
            .children
            .keys()
            .map(|(_, segment)| match segment {
                Segment::Key(key) => key.len(),
                Segment::Index(_) => 0,
            })
            .sum();
        assert_eq!(stored, key.len());
    }

    #[test]
    fn paths_print_like_serde_norway() {
        let path = NodePath::root().key("client").index(2).key("expect").key("result");
        assert_eq!(path.to_string(), "client[2].expect.result");
        assert_eq!(path.parent().to_string(), "client[2].expect");
        assert_eq!(path.last_key(), Some("result"));
        assert_eq!(NodePath::root().to_string(), "");
    }

    #[test]
    fn refuses_duplicate_keys_at_the_second() {
        let err = SourceIndex::build("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
        assert_eq!(err.location, at(4, 3));
        assert!(err.message.contains("duplicate key \"c\" (first given at 3:3)"), "{}", err.message);
    }

    #[test]
    fn refuses_two_documents() {
        let err = SourceIndex::build("a: 1\n---\na: 2\n").unwrap_err();
        assert_eq!(err.location.line, 2);
        assert!(err.message.contains("exactly one YAML document"));
    }

    #[test]
    fn refuses_deep_nesting() {
        let text = format!("a: {}1{}\n", "[".repeat(100), "]".repeat(100));
        let err = SourceIndex::build(&text).unwrap_err();
        assert_eq!(err.location, at(1, 4 + MAX_DEPTH - 1));
        assert!(err.message.contains("nested more than 64 levels"));
    }

    #[test]
    fn refuses_deep_nesting_the_scanner_meets_first() {
        // Found probing 1 MiB files: "{a: " repeated made libyaml (asked for a better syntax message) take minutes.
        let err = SourceIndex::build(&"{a: ".repeat(300)).unwrap_err();
        assert!(!err.syntax);
        assert!(err.message.contains("nested more than 64 levels"), "{}", err.message);
        assert_eq!(err.location, at(1, 4 * 255 + 1));
    }

    #[test]
    fn refuses_alias_bombs_before_expanding() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let items = vec![format!("*a{}", level - 1); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        let err = SourceIndex::build(&text).unwrap_err();
        assert!(err.message.contains("expand this file to more than 100000 values"), "{}", err.message);
        assert_eq!(err.location.line, 5, "level 4 is the first to pass 100000 nodes");
    }

    #[test]
    fn counts_aliases_of_scalars_and_maps() {
        let mut expansion = Expansion::default();
        expansion.start(1);
        expansion.scalar(0, 5);
        expansion.scalar(2, 7);
        expansion.end();
        assert_eq!(expansion.anchor_sizes.get(&1), Some(&Size { nodes: 3, bytes: 12 }));
        assert_eq!(expansion.alias(1), Size { nodes: 6, bytes: 24 });
        assert_eq!(expansion.alias(2), Size { nodes: 7, bytes: 31 });
    }

    #[test]
    fn refuses_few_aliases_of_a_long_string_before_expanding() {
        // Found by the issue-12 campaign: 90000 aliases of a 400 KB string passed the node limit, and serde
        // aborted on out of memory while expanding them (36 GB).
        let text = format!("a: &a \"{}\"\nb: [{}]\n", "x".repeat(400_000), vec!["*a"; 90_000].join(", "));
        let err = SourceIndex::build(&text).unwrap_err();
        assert!(err.message.contains("expand this file to more than 4 MiB of text"), "{}", err.message);
        assert_eq!(err.location, at(2, 5 + 4 * 9), "the tenth copy passes 4 MiB");
    }

    #[test]
    fn refuses_complex_keys() {
        let err = SourceIndex::build("? [a, b]\n: 1\n").unwrap_err();
        assert!(err.message.contains("map keys must be plain names"), "{}", err.message);
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = SourceIndex::build("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("not valid YAML"), "{}", err.message);
        assert!(err.location.line >= 1);
    }

    #[test]
    fn offsets_map_to_character_columns() {
        let bytes = "ab\nxé\u{00ff}z".as_bytes();
        assert_eq!(location_of_offset(bytes, 0), at(1, 1));
        assert_eq!(location_of_offset(bytes, 3), at(2, 1));
        assert_eq!(location_of_offset(bytes, 4), at(2, 2));
        assert_eq!(location_of_offset(bytes, 6), at(2, 3));
    }

    #[test]
    fn offsets_and_locations_agree() {
        let text = "a: 1\nbé: \"x ${y}\"\n\nc: 2";
        for (offset, _) in text.char_indices() {
            assert_eq!(offset_of_location(text, location_of_offset(text.as_bytes(), offset)), Some(offset));
        }
        assert_eq!(offset_of_location(text, at(2, 8)), Some(text.find("${").unwrap()));
        assert_eq!(offset_of_location(text, at(3, 1)), Some(text.find("\n\n").unwrap() + 1));
        assert_eq!(offset_of_location(text, at(2, 20)), None);
        assert_eq!(offset_of_location(text, at(9, 1)), None);
    }
}
