//! Judging a tree's symbolic links by where they resolve among the entries already made, so
//! that no link a transfer makes leads out of its tree, whatever else the manifest holds.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::name::Escaped;
use crate::wire::MAX_PATH_LEN;

/// Most links followed to open one link, itself included, as the kernel's `MAXSYMLINKS`
/// (beyond it, opening fails with `ELOOP`).
pub const MAX_LINK_HOPS: u8 = 40;

/// The receive directory (or, on the sender, the place above the roots).
const ROOT: u32 = 0;

/// Where a link leads, as [`LinkJudge::judge`] found it.
///
/// Either a *certain* place (a real directory, reached only through real directories and
/// accepted links) or an *uncertain* one somewhere below `node`, through a name the manifest
/// does not know or an entry that is not a directory. Opaque: hand it back to
/// [`LinkJudge::accept`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    node: u32,
    certain: bool,
    /// Links the kernel follows to open the link: itself, and those its target passes through
    /// (at most [`MAX_LINK_HOPS`]).
    hops: u8,
}

/// Why a link is refused; printed after the link's name, as in "the link top/l points out of
/// the tree".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The target is empty.
    #[error("has an empty target")]
    Empty,
    /// The target holds a NUL byte.
    #[error("has a NUL byte in its target")]
    Nul,
    /// The target is longer than [`MAX_PATH_LEN`].
    #[error("has a target of {0} bytes; the limit is {MAX_PATH_LEN}")]
    TooLong(usize),
    /// The target starts with `/`.
    #[error("points out of the tree (its target is absolute)")]
    Absolute,
    /// The link is a top-level entry: there is no tree of its own to point into.
    #[error("is at the top level, with no tree of its own to point into")]
    TopLevel,
    /// The directory that would hold the link is not a real directory of the tree.
    #[error("is in {}, which was not made as a directory", Escaped(.0))]
    Parent(Vec<u8>),
    /// A `..` climbs above the top-level entry the link belongs to.
    #[error("points out of the tree")]
    OutOfTree,
    /// The target goes on below an entry that is not a directory made by the transfer.
    #[error("passes through {}, which was not made as a directory", Escaped(.0))]
    Through(Vec<u8>),
    /// A `..` follows a name whose nature on disk nothing in the tree vouches for.
    #[error("uses .. below {}, where the tree cannot say what is there", Escaped(.0))]
    Unknown(Vec<u8>),
    /// Opening the link would follow more than [`MAX_LINK_HOPS`] links, itself included.
    #[error("too many levels of links")]
    TooManyLinks,
}

#[derive(Clone, Copy, Debug)]
enum NodeKind {
    /// A directory; `real` when it is one on disk and so is every directory above it.
    Dir { real: bool },
    /// A link made on disk, and where it leads.
    Link(Resolution),
    /// Anything else the manifest names: a file, a refused entry, a link not made.
    Other,
}

#[derive(Debug)]
struct Node {
    parent: u32,
    name: Arc<[u8]>,
    kind: NodeKind,
}

/// Judges the symbolic links of one manifest, fed its entries in manifest order (parents before
/// children, each path once): a link is accepted when its target, resolved among the entries
/// recorded so far, stays inside the top-level entry it belongs to.
///
/// A `..` is followed only from a directory the tree vouches for (a real directory reached
/// through real directories and accepted links), never out of a top-level entry; below a name
/// the tree does not know, or at the end of the target, anything may stand on disk, so the
/// target may only go down from there. Judging costs one hash lookup per component of the
/// link's path and of its target: an accepted link keeps its resolution, so following it later
/// costs one step.
#[derive(Debug)]
pub struct LinkJudge {
    nodes: Vec<Node>,
    children: HashMap<(u32, Arc<[u8]>), u32>,
}

impl Default for LinkJudge {
    fn default() -> LinkJudge {
        LinkJudge::new()
    }
}

impl LinkJudge {
    /// A judge that knows nothing but the receive directory.
    pub fn new() -> LinkJudge {
        LinkJudge {
            nodes: vec![Node {
                parent: ROOT,
                name: Arc::from(&b""[..]),
                kind: NodeKind::Dir { real: true },
            }],
            children: HashMap::new(),
        }
    }

    /// Records a directory entry; `real`: the receiver made it or found a real (non-symlink)
    /// directory there. A directory below one that is not real is not real either.
    pub fn dir(&mut self, path: impl AsRef<[u8]>, real: bool) {
        self.record(path.as_ref(), |parent| NodeKind::Dir {
            real: real && matches!(parent, NodeKind::Dir { real: true }),
        });
    }

    /// Records any other entry that is not a traversable directory: a file, a refused entry, a
    /// link judged but not made.
    pub fn other(&mut self, path: impl AsRef<[u8]>) {
        self.record(path.as_ref(), |_| NodeKind::Other);
    }

    /// Judges a link at `path` whose content is `target`, without recording anything.
    pub fn judge(
        &self,
        path: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> Result<Resolution, LinkError> {
        let (path, target) = (path.as_ref(), target.as_ref());
        if target.is_empty() {
            return Err(LinkError::Empty);
        }
        if target.len() > MAX_PATH_LEN {
            return Err(LinkError::TooLong(target.len()));
        }
        if target.contains(&0) {
            return Err(LinkError::Nul);
        }
        if target.starts_with(b"/") {
            return Err(LinkError::Absolute);
        }
        let dir_path = match crate::wire::parent_of(path) {
            Some(dir) => dir,
            None => return Err(LinkError::TopLevel),
        };
        let dir = match self.find(dir_path) {
            Some(d) if matches!(self.nodes[d as usize].kind, NodeKind::Dir { real: true }) => d,
            _ => return Err(LinkError::Parent(dir_path.to_owned())),
        };
        let mut at = Resolution {
            node: dir,
            certain: true,
            hops: 0,
        };
        // Links followed so far, each with the links its own target followed.
        let mut hops = 0u8;
        // What made the place uncertain, for the message: a node, and a name below it if the
        // name is not in the tree.
        let mut unsure: (u32, Option<&[u8]>) = (dir, None);
        let mut components = target
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .peekable();
        while let Some(c) = components.next() {
            if !at.certain {
                if c == b".." {
                    let (node, name) = unsure;
                    return Err(LinkError::Unknown(self.path_of(node, name)));
                }
                continue;
            }
            if c == b".." {
                let parent = self.nodes[at.node as usize].parent;
                if at.node == ROOT || parent == ROOT {
                    return Err(LinkError::OutOfTree);
                }
                at.node = parent;
                continue;
            }
            let child = match self.child(at.node, c) {
                Some(child) => child,
                None => {
                    unsure = (at.node, Some(c));
                    at.certain = false;
                    continue;
                }
            };
            match self.nodes[child as usize].kind {
                NodeKind::Dir { real: true } => at.node = child,
                NodeKind::Link(to) => {
                    hops += to.hops;
                    // Opening this link follows it too.
                    if hops + 1 > MAX_LINK_HOPS {
                        return Err(LinkError::TooManyLinks);
                    }
                    unsure = (child, None);
                    at = to;
                }
                NodeKind::Dir { real: false } | NodeKind::Other => {
                    if components.peek().is_some() {
                        return Err(LinkError::Through(self.path_of(child, None)));
                    }
                    at.node = child;
                    at.certain = false;
                }
            }
        }
        Ok(Resolution {
            hops: hops + 1,
            ..at
        })
    }

    /// Records a link that was made on disk, with the resolution [`LinkJudge::judge`] gave it.
    pub fn accept(&mut self, path: impl AsRef<[u8]>, resolution: Resolution) {
        self.record(path.as_ref(), |_| NodeKind::Link(resolution));
    }

    /// Adds a node for `path` under its parent, if the parent is known. An entry left out is
    /// harmless: a name the judge does not know is uncertain, the most careful view of it.
    fn record(&mut self, path: &[u8], kind: impl FnOnce(NodeKind) -> NodeKind) {
        let (parent, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => match self.find(&path[..i]) {
                Some(p) => (p, &path[i + 1..]),
                None => return,
            },
            None => (ROOT, path),
        };
        if let Some(existing) = self.child(parent, name) {
            // A path recorded twice (never, from a checked manifest): trust neither.
            self.nodes[existing as usize].kind = NodeKind::Other;
            return;
        }
        let id = u32::try_from(self.nodes.len()).expect("fewer than 2^32 entries");
        let name: Arc<[u8]> = Arc::from(name);
        let kind = kind(self.nodes[parent as usize].kind);
        self.nodes.push(Node {
            parent,
            name: name.clone(),
            kind,
        });
        self.children.insert((parent, name), id);
    }

    /// The node of a recorded path.
    fn find(&self, path: &[u8]) -> Option<u32> {
        path.split(|b| *b == b'/')
            .try_fold(ROOT, |node, c| self.child(node, c))
    }

    fn child(&self, parent: u32, name: &[u8]) -> Option<u32> {
        self.children.get(&(parent, name) as &dyn ChildKey).copied()
    }

    /// The path of `node`, and of `name` below it if given, for a message.
    fn path_of(&self, mut node: u32, name: Option<&[u8]>) -> Vec<u8> {
        let mut names: Vec<&[u8]> = name.into_iter().collect();
        while node != ROOT {
            let n = &self.nodes[node as usize];
            names.push(&n.name);
            node = n.parent;
        }
        names.reverse();
        names.join(&b'/')
    }
}

/// A key of [`LinkJudge::children`], owned or borrowed, so that a lookup needs no allocation.
trait ChildKey {
    fn parts(&self) -> (u32, &[u8]);
}

impl ChildKey for (u32, Arc<[u8]>) {
    fn parts(&self) -> (u32, &[u8]) {
        (self.0, &self.1)
    }
}

impl ChildKey for (u32, &[u8]) {
    fn parts(&self) -> (u32, &[u8]) {
        *self
    }
}

impl<'a> Borrow<dyn ChildKey + 'a> for (u32, Arc<[u8]>) {
    fn borrow(&self) -> &(dyn ChildKey + 'a) {
        self
    }
}

// Hashes as `(u32, Arc<[u8]>)` does (an `Arc<[u8]>` hashes as its slice), as `Borrow` requires.
impl Hash for dyn ChildKey + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn ChildKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn ChildKey + '_ {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path, PathBuf};

    /// A judge that knows `dirs`, all real.
    fn judge_with(dirs: &[&str]) -> LinkJudge {
        let mut j = LinkJudge::new();
        for d in dirs {
            j.dir(d, true);
        }
        j
    }

    /// Judges a link and records it as the receiver would: accepted and made, or not made.
    fn link(j: &mut LinkJudge, path: &str, target: &str) -> Result<Resolution, LinkError> {
        let r = j.judge(path, target);
        match r {
            Ok(res) => j.accept(path, res),
            Err(_) => j.other(path),
        }
        r
    }

    #[test]
    fn a_link_through_a_link_climbs_from_its_target() {
        let mut j = judge_with(&["top", "top/d"]);
        let u = link(&mut j, "top/d/u", "..").unwrap();
        assert!(u.certain);
        assert_eq!(j.path_of(u.node, None), b"top");
        assert_eq!(link(&mut j, "top/d/v", "u/.."), Err(LinkError::OutOfTree));
        let w = link(&mut j, "top/d/w", "v/..").unwrap_err();
        assert_eq!(w, LinkError::Through("top/d/v".into()));
        assert_eq!(
            w.to_string(),
            "passes through top/d/v, which was not made as a directory"
        );
        assert_eq!(
            link(&mut j, "top/d/x", "w/outside"),
            Err(LinkError::Through("top/d/w".into()))
        );
        // Through the accepted one, down again, is fine.
        assert!(link(&mut j, "top/d/y", "u/d/u/d").unwrap().certain);
    }

    #[test]
    fn the_old_lexical_cases_still_hold() {
        let mut j = judge_with(&["top", "top/sub"]);
        assert!(j.judge("top/l", "a").is_ok());
        assert!(j.judge("top/sub/l", "../a").is_ok());
        assert_eq!(j.judge("top/l", "../other"), Err(LinkError::OutOfTree));
        assert_eq!(j.judge("top/sub/l", "../../x"), Err(LinkError::OutOfTree));
        assert_eq!(j.judge("top/l", ""), Err(LinkError::Empty));
        // Formerly refused by the manifest as a whole, now one link at a time.
        j.dir("d", true);
        assert_eq!(j.judge("d/l", "../../etc"), Err(LinkError::OutOfTree));
        assert_eq!(j.judge("d/l", "/etc/passwd"), Err(LinkError::Absolute));
        assert_eq!(j.judge("l", "x"), Err(LinkError::TopLevel));
        // Lexically inside, but `x` is unknown: what it is on disk decides what `..` means.
        assert!(matches!(
            j.judge("top/sub/l", "./x/../../b"),
            Err(LinkError::Unknown(_))
        ));
        j.other("top/f");
        assert!(j.judge("top/l", "f").is_ok());
    }

    #[test]
    fn bad_targets_are_refused() {
        let j = judge_with(&["top"]);
        assert_eq!(j.judge("top/l", "a\0b"), Err(LinkError::Nul));
        let long = "a/".repeat(2048) + "a";
        assert_eq!(j.judge("top/l", &long), Err(LinkError::TooLong(4097)));
        assert!(j.judge("top/l", &long[..4096]).is_ok());
        assert!(j.judge("top/l", ".").is_ok());
        assert!(j.judge("top/l", ".//./a//").is_ok());
        assert_eq!(
            j.judge("nowhere/l", "a"),
            Err(LinkError::Parent("nowhere".into()))
        );
    }

    #[test]
    fn links_that_loop_resolve_nowhere_else() {
        let mut j = judge_with(&["top", "top/d"]);
        let a = link(&mut j, "top/d/a", "b").unwrap();
        let b = link(&mut j, "top/d/b", "a").unwrap();
        assert!(!a.certain && !b.certain);
        assert!(matches!(
            link(&mut j, "top/d/c", "b/.."),
            Err(LinkError::Unknown(_))
        ));
        assert!(link(&mut j, "top/d/s", "s").is_ok());
        assert!(link(&mut j, "top/d/e", "b/x/y").is_ok());
    }

    #[test]
    fn a_chain_of_41_links_is_too_deep() {
        let mut j = judge_with(&["top"]);
        assert_eq!(link(&mut j, "top/l1", ".").unwrap().hops, 1);
        for i in 2..=40 {
            let r = link(&mut j, &format!("top/l{i}"), &format!("l{}", i - 1));
            assert_eq!(r.unwrap().hops, i as u8);
        }
        // Opening l41 would follow 41 links: the kernel says ELOOP.
        assert_eq!(link(&mut j, "top/l41", "l40"), Err(LinkError::TooManyLinks));
        assert_eq!(
            j.judge("top/l41", "l40").unwrap_err().to_string(),
            "too many levels of links"
        );
        // Many short hops in one target count as well.
        let target = vec!["l1"; 40].join("/");
        assert_eq!(j.judge("top/m", &target), Err(LinkError::TooManyLinks));
        assert_eq!(j.judge("top/m", &target[3..]).unwrap().hops, 40);
    }

    #[test]
    fn dotdot_after_an_unknown_name_is_refused() {
        let j = judge_with(&["top", "top/d"]);
        let e = j.judge("top/d/l", "x/..").unwrap_err();
        assert_eq!(e, LinkError::Unknown("top/d/x".into()));
        assert_eq!(
            e.to_string(),
            "uses .. below top/d/x, where the tree cannot say what is there"
        );
        assert!(j.judge("top/d/l", "x/y/z").is_ok());
        assert!(j.judge("top/d/l", "../x/y").is_ok());
    }

    #[test]
    fn a_refused_directory_is_not_passed_through() {
        let mut j = judge_with(&["top"]);
        j.dir("top/no", false);
        j.dir("top/no/sub", true);
        assert_eq!(
            j.judge("top/no/l", "x"),
            Err(LinkError::Parent("top/no".into()))
        );
        assert_eq!(
            j.judge("top/no/sub/l", "x"),
            Err(LinkError::Parent("top/no/sub".into()))
        );
        assert_eq!(
            j.judge("top/l", "no/sub"),
            Err(LinkError::Through("top/no".into()))
        );
        let at = j.judge("top/l", "no").unwrap();
        assert!(!at.certain);
        assert!(matches!(
            j.judge("top/l", "no/.."),
            Err(LinkError::Through(_))
        ));
        j.other("top/f");
        assert_eq!(
            j.judge("top/l", "f/x"),
            Err(LinkError::Through("top/f".into()))
        );
    }

    #[test]
    fn a_link_to_a_later_entry_is_uncertain() {
        let mut j = judge_with(&["top", "top/d"]);
        let early = link(&mut j, "top/d/early", "later/x").unwrap();
        assert!(!early.certain);
        j.dir("top/d/later", true);
        // Known now, and certain.
        assert!(link(&mut j, "top/d/now", "later").unwrap().certain);
        // The early link stays uncertain, so nothing climbs out of it.
        assert!(matches!(
            j.judge("top/d/l", "early/.."),
            Err(LinkError::Unknown(_))
        ));
    }

    #[test]
    fn deep_targets_cost_one_step_per_component() {
        let mut j = judge_with(&["top", "top/a"]);
        // 4091 bytes of up and down: certain all the way.
        let target = "a/../".repeat(818) + "a";
        assert!(target.len() <= MAX_PATH_LEN);
        let at = j.judge("top/l", &target).unwrap();
        assert!(at.certain);
        assert_eq!(j.path_of(at.node, None), b"top/a");
        // A long chain of directories and links into it.
        let mut path = String::from("top/a");
        for _ in 1..1000 {
            path.push_str("/a");
            j.dir(&path, true);
        }
        let deep = link(&mut j, "top/deep", &"a/".repeat(1000)).unwrap();
        assert_eq!(j.path_of(deep.node, None), path.as_bytes());
        let up = "../".repeat(1000) + "a";
        assert!(link(&mut j, &format!("{path}/up"), &up).unwrap().certain);
        let over = "../".repeat(1001);
        assert_eq!(
            j.judge(format!("{path}/up2"), &over),
            Err(LinkError::OutOfTree)
        );
        // Links counted in a long target, each one step.
        link(&mut j, "top/s", ".").unwrap();
        let via = "s/".repeat(39) + "deep/..";
        assert_eq!(j.judge("top/l", &via), Err(LinkError::TooManyLinks));
        let via = "s/".repeat(38) + "deep/..";
        let at = j.judge("top/l", &via).unwrap();
        assert_eq!((at.certain, at.hops), (true, 40));
    }

    #[test]
    fn names_in_messages_are_escaped() {
        let mut j = judge_with(&["top"]);
        j.other("top/\u{1b}[2J");
        let e = j.judge("top/l", "\u{1b}[2J/x").unwrap_err();
        assert!(!e.to_string().chars().any(char::is_control), "{e}");
    }

    /// One generated manifest entry: a parent (an index into the directories so far, where 0 is
    /// the top level), a name, and what it is.
    #[derive(Clone, Debug)]
    enum Made {
        Dir(usize, usize, bool),
        File(usize, usize),
        Link(usize, usize, String),
    }

    const NAMES: [&str; 2] = ["a", "b"];
    const PARTS: [&str; 6] = ["a", "b", "..", "..", ".", ""];

    fn target() -> impl Strategy<Value = String> {
        let name = || proptest::option::of(proptest::sample::select(&NAMES[..]));
        prop_oneof![
            1 => proptest::collection::vec(proptest::sample::select(&PARTS[..]), 1..5)
                .prop_map(|parts| parts.join("/")),
            // A name, climbs, a name: the shape of an escape through a link.
            2 => (name(), 1..4usize, name()).prop_map(|(first, ups, last)| {
                let parts: Vec<&str> = first.into_iter().chain(vec![".."; ups]).chain(last).collect();
                parts.join("/")
            }),
        ]
    }

    fn made() -> impl Strategy<Value = Made> {
        prop_oneof![
            3 => (0..64usize, 0..NAMES.len(), proptest::bool::weighted(0.85))
                .prop_map(|(p, n, real)| Made::Dir(p, n, real)),
            1 => (0..64usize, 0..NAMES.len()).prop_map(|(p, n)| Made::File(p, n)),
            5 => (0..64usize, 0..NAMES.len(), target()).prop_map(|(p, n, t)| Made::Link(p, n, t)),
        ]
    }

    /// Where `path` leads on disk, following links as the kernel does; what does not exist (or
    /// is not a directory) is taken by its name, as if it were a directory. `None`: a loop.
    fn resolve_on_disk(path: &Path) -> Option<PathBuf> {
        let mut at = PathBuf::from("/");
        let mut todo: Vec<PathBuf> = path
            .components()
            .rev()
            .map(|c| c.as_os_str().into())
            .collect();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match Path::new(&c).components().next() {
                Some(Component::RootDir) => at = PathBuf::from("/"),
                Some(Component::ParentDir) => {
                    at.pop();
                }
                Some(Component::Normal(name)) => {
                    let next = at.join(name);
                    if next.symlink_metadata().is_ok_and(|m| m.is_symlink()) {
                        hops += 1;
                        if hops > 40 {
                            return None;
                        }
                        let target = std::fs::read_link(&next).unwrap();
                        let parts = target.components().map(|c| c.as_os_str().into());
                        todo.extend(parts.collect::<Vec<PathBuf>>().into_iter().rev());
                    } else {
                        at = next;
                    }
                }
                _ => {}
            }
        }
        Some(at)
    }

    #[test]
    fn the_oracle_sees_where_the_chain_leads() {
        let tmp = tempfile::tempdir().unwrap();
        let outer = std::fs::canonicalize(tmp.path()).unwrap();
        let d = outer.join("dst/top/d");
        std::fs::create_dir_all(&d).unwrap();
        for (name, target) in [
            ("u", ".."),
            ("v", "u/.."),
            ("w", "v/.."),
            ("x", "w/outside"),
        ] {
            std::os::unix::fs::symlink(target, d.join(name)).unwrap();
        }
        assert_eq!(resolve_on_disk(&d.join("v")), Some(outer.join("dst")));
        assert_eq!(resolve_on_disk(&d.join("w")), Some(outer.clone()));
        assert_eq!(resolve_on_disk(&d.join("x")), Some(outer.join("outside")));
        std::os::unix::fs::symlink("y", d.join("y")).unwrap();
        assert_eq!(resolve_on_disk(&d.join("y")), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Materialises random manifests as a receiver would, and checks on disk that every
        /// link the judge accepted stays inside its own top-level entry.
        #[test]
        fn accepted_links_resolve_inside_their_tree(entries in proptest::collection::vec(made(), 1..40)) {
            // On tmpfs when there is one: thousands of small trees, no disk to wait for.
            let tmp = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
            let dst = std::fs::canonicalize(tmp.path()).unwrap().join("dst");
            std::fs::create_dir(&dst).unwrap();
            let mut j = LinkJudge::new();
            // Directories so far: path, and whether it is a real one on disk.
            let mut dirs: Vec<(String, bool)> = vec![(String::new(), true)];
            let mut seen = std::collections::HashSet::new();
            let mut accepted = Vec::new();
            for e in entries {
                let (p, n) = match &e {
                    Made::Dir(p, n, _) | Made::File(p, n) | Made::Link(p, n, _) => (*p, *n),
                };
                // Mostly one of the newest directories, as a walk goes: deep trees come sooner.
                let i = match p < 16 {
                    true => p % dirs.len(),
                    false => dirs.len() - 1 - p % dirs.len().min(3),
                };
                let (parent, parent_real) = dirs[i].clone();
                let path = match parent.is_empty() {
                    true => NAMES[n].to_owned(),
                    false => format!("{parent}/{}", NAMES[n]),
                };
                if !seen.insert(path.clone()) {
                    continue;
                }
                let on_disk = dst.join(&path);
                match e {
                    Made::Dir(_, _, real) => {
                        // A directory the receiver refused has a file in its place.
                        if parent_real && real {
                            std::fs::create_dir(&on_disk).unwrap();
                        } else if parent_real {
                            std::fs::write(&on_disk, b"").unwrap();
                        }
                        j.dir(&path, parent_real && real);
                        dirs.push((path, parent_real && real));
                    }
                    Made::File(..) => {
                        if parent_real {
                            std::fs::write(&on_disk, b"").unwrap();
                        }
                        j.other(&path);
                    }
                    Made::Link(_, _, target) => {
                        match j.judge(&path, &target) {
                            Ok(r) => {
                                prop_assert!(parent_real);
                                std::os::unix::fs::symlink(&target, &on_disk).unwrap();
                                j.accept(&path, r);
                                accepted.push((path, target));
                            }
                            Err(_) => j.other(&path),
                        }
                    }
                }
            }
            for (path, target) in accepted {
                let link = dst.join(&path);
                let top = dst.join(path.split('/').next().unwrap());
                let Some(to) = resolve_on_disk(&link) else { continue };
                prop_assert!(to.starts_with(&dst) && to != dst, "{path} -> {target}: {to:?}");
                prop_assert!(to.starts_with(&top), "{path} -> {target} leaves its tree: {to:?}");
                if let Ok(real) = std::fs::canonicalize(&link) {
                    prop_assert_eq!(&real, &to, "{} -> {}", path, target);
                }
            }
        }
    }
}
