//! The answer phase of a tree: every entry of the manifest settled before any file flows:
//! directories made, links judged and made, and for each file whether it is sent whole, checked
//! against one already there, or resumed from a partial kept from an interrupted transfer.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;

use super::{header_of, Prestat, Session};
use crate::auth::{self, Seal};
use crate::error::RecvError;
use crate::meta::{node_type, Plan};
use crate::name::Escaped;
use crate::recv::handshake::{linger, tell};
use crate::recv::land::timestamps;
use crate::recv::partial::{self};
use crate::roots::Identity;
use crate::units::{os_reason, Bytes};
use crate::wire::RefuseCode;
use crate::wire::{Answer, Answers, Entry, Kind, KEPT_MODE};

/// Manifests of fewer entries are answered without looking ahead.
const LOOK_AHEAD_FROM: usize = 64;

/// Top-level directories looked for, at most, to decide whether to look ahead.
const MAX_TOPS_LOOKED_AT: usize = 16;

impl Session<'_, '_> {
    /// Makes directories and links, finds files already here and partials to resume, checks
    /// free space, and sends one answer per entry.
    pub(super) fn answer_all(&mut self) -> Result<(), RecvError> {
        // Before the first stat: what the answers saw is at least this old.
        self.answered = std::time::Instant::now();
        // For a tree sent again, what is here is looked at ahead on another core.
        if self.worth_looking_ahead() {
            let entries = &self.manifest.entries[..];
            self.prestat = Some(Prestat::start(self.scope, self.dirs.root(), entries));
        }
        // Checked: a manifest's sizes are the peer's numbers, and their sum must not wrap.
        let mut need = Some(0u64);
        let mut unkept = 0u32;
        for i in 0..self.manifest.entries.len() {
            let answer = self.answer(i);
            let e = &self.manifest.entries[i];
            if let Answer::Refused(why) = &answer {
                log::warn!("{}: {why}", Escaped(&e.path));
                self.counts.failed += 1;
            }
            if !matches!(answer, Answer::Refused(_))
                && matches!(self.ids.plan(e, &self.rights), Some((_, true)))
            {
                unkept += 1;
            }
            if let Kind::File {
                size,
                sparse_data_len,
                ..
            } = e.kind
            {
                match answer {
                    Answer::Send => {
                        need = need.and_then(|n| n.checked_add(sparse_data_len.unwrap_or(size)));
                        self.left += 1;
                    }
                    Answer::Partial(held, _) => {
                        need = need.and_then(|n| n.checked_add(size.saturating_sub(held)));
                        self.left += 1;
                    }
                    _ => {}
                }
            }
            self.answers.push(answer);
        }
        self.prestat = None;
        if let Ok(vfs) = rustix::fs::fstatvfs(&self.rx.dir) {
            let have = vfs.f_bavail.saturating_mul(vfs.f_frsize);
            if need.is_none_or(|need| need > have) {
                let need = match need {
                    Some(n) => Bytes(n).to_string(),
                    None => "more than 16 EiB".into(),
                };
                let msg = format!(
                    "not enough space on {}: need {need}, have {}",
                    self.rx.config.dir.display(),
                    Bytes(have)
                );
                // Nothing is left of a tree refused: what the answers made goes.
                self.unmake();
                let refusal = Answers::Refused(RefuseCode::NoSpace, msg.clone());
                if (&*self.stream).write_all(&refusal.encode()).is_ok() {
                    linger(self.stream);
                }
                return Err(RecvError::Refused(msg));
            }
        }
        if unkept > 0 {
            log::warn!(
                "{unkept} entries land without the owners, setuid or setgid bits or privileged \
                 attributes they were sent with ({})",
                match self.rx.config.preserve_privileged {
                    true => "kept only for a sender with the token, by a zrecv run as root",
                    false => "kept only with --preserve-privileged",
                }
            );
        }
        self.counts.unkept = unkept as usize;
        let mut answers = Answers::Each(self.answers.clone(), unkept).encode();
        if self.integrity.keyed() {
            let seal = self.integrity.seal_message(Seal::Answers, &answers);
            answers.extend_from_slice(&seal);
        }
        tell(self.stream, &answers, "answering the manifest", 0, 0)
    }

    /// Whether looking ahead at what is here pays: a manifest of many entries, a second core,
    /// and a top-level directory already here (in a new tree there is nothing to look at).
    fn worth_looking_ahead(&self) -> bool {
        let entries = &self.manifest.entries;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let root = self.dirs.root();
        let here = |e: &Entry| {
            rustix::fs::statat(&root, &e.path[..], AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
        };
        entries.len() >= LOOK_AHEAD_FROM
            && cores > 1
            && (entries.iter())
                .filter(|e| e.parent().is_none() && e.kind == Kind::Dir)
                .take(MAX_TOPS_LOOKED_AT)
                .any(here)
    }

    /// Removes what answering made: the directories this transfer made and the links it made
    /// in them, deepest first. (Links made in directories that were there stay: they cannot be
    /// told from links that were there.)
    fn unmake(&mut self) {
        for (i, e) in self.manifest.entries.iter().enumerate().rev() {
            let in_fresh = e.parent().is_some_and(|p| self.fresh_dirs.contains(p));
            let flags = match &e.kind {
                Kind::Dir if self.fresh_dirs.contains(&e.path) => AtFlags::REMOVEDIR,
                Kind::Symlink { .. } | Kind::Fifo | Kind::Socket | Kind::Device { .. }
                    if in_fresh && self.answers[i] == Answer::Done =>
                {
                    AtFlags::empty()
                }
                _ => continue,
            };
            // A top-level directory is there under its hidden name.
            let base = match e.parent() {
                None => self.dirs.on_disk(&e.path).into_owned(),
                Some(_) => e.base().to_vec(),
            };
            let removed = self
                .dirs
                .get(e.parent())
                .and_then(|parent| Ok(rustix::fs::unlinkat(&parent, &base, flags)?));
            if let Err(err) = removed {
                log::warn!("removing {} of a refused tree: {err}", Escaped(&e.path));
            }
        }
    }

    /// Answers entry `i`, and tells the link judge what became of it.
    pub(super) fn answer(&mut self, i: usize) -> Answer {
        let answer = self.settle(i);
        let e = &self.manifest.entries[i];
        match (&e.kind, &answer) {
            (Kind::Dir, a) => self.links.dir(&e.path, *a == Answer::Done),
            // A link made was accepted with where it leads (unless nothing is judged).
            (Kind::Symlink { .. }, Answer::Done) if !self.trust_links => {}
            _ => self.links.other(&e.path),
        }
        answer
    }

    /// Makes a directory or link, or finds what is there for a file.
    pub(super) fn settle(&mut self, i: usize) -> Answer {
        let e = &self.manifest.entries[i];
        // A directory this transfer made holds nothing yet: no file or partial to look for.
        // (Should something appear there meanwhile, the rename refuses to replace it.)
        let fresh = e.parent().is_some_and(|p| self.fresh_dirs.contains(p));
        if fresh && matches!(e.kind, Kind::File { .. }) {
            return Answer::Send;
        }
        let parent = match self.dirs.get(e.parent()) {
            Ok(d) => d,
            Err(err) => {
                return Answer::Refused(format!("opening its directory: {}", os_reason(&err)))
            }
        };
        let base = e.base();
        let seen = match fresh {
            true => None,
            false => self.prestat.as_mut().and_then(|p| p.take(i)),
        };
        let existing = match fresh {
            true => None,
            false => match seen
                .unwrap_or_else(|| rustix::fs::statat(&parent, base, AtFlags::SYMLINK_NOFOLLOW))
            {
                Ok(st) => Some(st),
                Err(Errno::NOENT) => None,
                Err(err) => return Answer::Refused(format!("checking what is there: {err}")),
            },
        };
        let existing_type = existing.map(|st| FileType::from_raw_mode(st.st_mode));
        // In a tree being built under a hidden name, everything is this receiver's own.
        let force = self.rx.config.force || self.in_stage(&e.path);
        let taken = || Answer::Refused("exists (use --force on the receiver)".into());
        match &e.kind {
            Kind::Dir => match existing_type {
                // A new tree: built under a hidden name, published whole.
                None if e.parent().is_none() => self.stage(i),
                None => match rustix::fs::mkdirat(&parent, base, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {
                        self.made_dirs.push(i);
                        self.fresh_dirs.insert(e.path.clone());
                        self.counts.dirs += 1;
                        Answer::Done
                    }
                    Err(err) => Answer::Refused(format!("making the directory: {err}")),
                },
                Some(FileType::Directory) => {
                    // A receiver that replaces files (or one an interrupted transfer made in
                    // a hidden tree, still this receiver's to finish) gives it its owner, mode,
                    // attributes and mtime at the end of the pass, as one made now: the mtime
                    // too, which what lands in it moves.
                    if force {
                        self.made_dirs.push(i);
                    }
                    self.counts.dirs += 1;
                    Answer::Done
                }
                Some(_) => Answer::Refused("exists and is not a directory".into()),
            },
            Kind::Symlink { target } => {
                // Where it leads, among what this transfer made before it: never out of its
                // tree, whatever chain of links the sender builds (unless the sender is
                // trusted with any link).
                let resolution = match self.trust_links {
                    true => None,
                    false => match self.links.judge(&e.path, target) {
                        Ok(r) => Some(r),
                        Err(err) => return Answer::Refused(format!("the link {err}")),
                    },
                };
                let made = match existing_type {
                    Some(FileType::Directory) => Answer::Refused("is a directory".into()),
                    // The same link: made again only to take metadata that differs, when the
                    // receiver replaces files.
                    Some(FileType::Symlink)
                        if rustix::fs::readlinkat(&parent, base, Vec::new())
                            .is_ok_and(|t| t.as_bytes() == &target[..])
                            && !existing.is_some_and(|st| self.differs(&st, e, force)) =>
                    {
                        Answer::Done
                    }
                    Some(_) if !force => taken(),
                    _ => self.make_node(&parent, e),
                };
                if made == Answer::Done {
                    self.counts.links += 1;
                    if let Some(resolution) = resolution {
                        self.links.accept(&e.path, resolution);
                    }
                }
                made
            }
            Kind::Device { .. } if !self.rights.privileged => Answer::Refused(
                "a device file: zrecv makes them only for a sender with the token, run as root \
                 with --preserve-privileged"
                    .into(),
            ),
            Kind::Fifo | Kind::Socket | Kind::Device { .. } => {
                let same = existing.is_some_and(|st| {
                    FileType::from_raw_mode(st.st_mode) == node_type(&e.kind)
                        && st.st_rdev == node_dev(&e.kind)
                        && !self.differs(&st, e, force)
                });
                let made = match existing_type {
                    _ if same => Answer::Done,
                    Some(FileType::Directory) => Answer::Refused("is a directory".into()),
                    Some(_) if !force => taken(),
                    _ => self.make_node(&parent, e),
                };
                if made == Answer::Done {
                    self.counts.specials += 1;
                }
                made
            }
            // Made at the end of the pass its frame comes in, once its first name is here.
            Kind::HardLink { first } => match &self.answers[*first as usize] {
                Answer::Refused(_) => Answer::Refused(format!(
                    "its first name {} was refused",
                    Escaped(&self.manifest.entries[*first as usize].path)
                )),
                _ => Answer::Send,
            },
            Kind::File { size, .. } => match existing {
                Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    Answer::Refused("is a directory".into())
                }
                // A copy with other names (perhaps outside --dir) whose metadata would be set is
                // replaced whole instead: setting it in place would set it on them too.
                Some(st)
                    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                        && st.st_size as u64 == *size
                        && !(force && st.st_nlink > 1 && self.stale_shared(&parent, &st, e)) =>
                {
                    // Whatever else differs (mode, mtime, owner, attributes) is set on the
                    // copy here if it has the sender's content, and only then.
                    // Only a file with fewer blocks than bytes can have holes worth looking
                    // for when it is checked.
                    if (st.st_blocks as u64).saturating_mul(512) < *size {
                        self.holey.insert(i as u32);
                    }
                    // A check may be answered with the root remembered for this identity.
                    self.wanted.push((i as u32, Identity::of(&st)));
                    let same_mtime = (st.st_mtime, st.st_mtime_nsec as u32) == e.mtime;
                    // One with other names that got here is the sender's in metadata already.
                    let differs = !(force && st.st_nlink > 1) && self.differs(&st, e, force);
                    if force && differs {
                        self.refresh.insert(i as u32, (st.st_dev, st.st_ino));
                    }
                    match (same_mtime, force) {
                        // Another mode or owner is as much a change as another mtime: without
                        // --force neither is set, and the copy is not taken for the sender's.
                        (true, false) if differs => taken(),
                        (true, _) => Answer::Landed,
                        (false, true) => Answer::SameSize,
                        (false, false) => taken(),
                    }
                }
                Some(_) if !force => taken(),
                _ => {
                    let header = header_of(e, self.verify);
                    if !header.resumable() {
                        // Sent without verification, it cannot resume: what was kept for its
                        // name is of no use any more (batched files do not forget it later).
                        partial::forget(&parent, &header.name);
                    }
                    // A partial resumes from its last piece boundary: less than a piece is
                    // dropped, and what follows the boundary is cut.
                    let taken = partial::take(parent, &header).and_then(|(temp, held)| {
                        match partial::resume_point(&temp, &header, held) {
                            Ok((0, _)) => None,
                            Ok((offset, _)) => Some((temp, offset)),
                            Err(err) => {
                                log::warn!("cutting a partial back: {err}");
                                None
                            }
                        }
                    });
                    match taken {
                        Some((temp, held)) => match auth::nonce() {
                            Ok(nonce) => {
                                self.partials.insert(i as u32, (temp, held, nonce));
                                Answer::Partial(held, nonce)
                            }
                            Err(err) => {
                                log::warn!("drawing a nonce: {err}");
                                partial::keep(temp, &header, held);
                                Answer::Send
                            }
                        },
                        None => Answer::Send,
                    }
                }
            },
        }
    }

    /// Whether what is here, `st`, lacks some of the metadata entry `e` would be given: its
    /// mode (but a link's) and its owner (when kept); a file's mtime; and, for a receiver
    /// `replacing` what is here, also the mtime of anything else and the attributes, which are
    /// not compared: an entry that carries some is taken to differ. (A fifo's mtime moves as it
    /// is written to, and links landed by older builds of zrecv kept none: without --force they
    /// are not refused for it.)
    fn differs(&self, st: &rustix::fs::Stat, e: &Entry, replacing: bool) -> bool {
        let plan = self.plan(e);
        let carries_attrs = plan.as_ref().is_some_and(|p| !p.xattrs.is_empty());
        differs_but_attrs(st, e, plan.as_ref(), replacing) || (replacing && carries_attrs)
    }

    /// Whether a file here with other names, `st`, lacks some of the metadata of entry `e`:
    /// it is then sent whole, so its attributes are read and compared (each the entry carries
    /// must be there with its value) rather than taken to differ, which would send it whole
    /// every time.
    fn stale_shared(&self, parent: &OwnedFd, st: &rustix::fs::Stat, e: &Entry) -> bool {
        let plan = self.plan(e);
        if differs_but_attrs(st, e, plan.as_ref(), true) {
            return true;
        }
        let Some(plan) = plan.filter(|p| !p.xattrs.is_empty()) else {
            return false;
        };
        let Ok(file) = partial::open_regular_beneath(parent, e.base()) else {
            return true;
        };
        let mut value = vec![0u8; crate::wire::MAX_XATTR_VALUE];
        !plan.xattrs.iter().all(|(name, want)| {
            let Ok(name) = std::ffi::CString::new(name.as_slice()) else {
                return false;
            };
            rustix::fs::fgetxattr(&file, name.as_c_str(), &mut value)
                .is_ok_and(|n| value[..n] == want[..])
        })
    }

    /// What would be set on entry `e`, as far as it is kept.
    pub(super) fn plan(&self, e: &Entry) -> Option<Plan> {
        self.ids.plan(e, &self.rights).map(|(plan, _)| plan)
    }

    /// Makes a link, fifo, socket or device under a hidden name, gives it its owner and mode
    /// when they are kept, renames it into place and sets its mtime.
    fn make_node(&self, parent: &Arc<OwnedFd>, e: &Entry) -> Answer {
        let temp = partial::scratch_name();
        let _ = rustix::fs::unlinkat(parent, temp.as_str(), AtFlags::empty());
        let made = match &e.kind {
            Kind::Symlink { target } => rustix::fs::symlinkat(&target[..], parent, temp.as_str()),
            kind => rustix::fs::mknodat(
                parent,
                temp.as_str(),
                node_type(kind),
                Mode::from_raw_mode(0o600),
                node_dev(kind),
            ),
        };
        if let Err(err) = made {
            let what = format!("making {}", Escaped(&e.path));
            return Answer::Refused(self.rx.local(&what, err.into()).to_string());
        }
        let plan = match &e.kind {
            Kind::Symlink { .. } => self.plan(e),
            _ => Some(self.plan(e).unwrap_or_else(|| Plan::of_mode(e.mode))),
        };
        // Its mtime before the rename, which moves only its ctime: one that will not take it
        // is not published.
        let times = timestamps(e.mtime.0, e.mtime.1);
        let published = match plan.map(|p| p.apply_at(parent, &temp, node_type(&e.kind))) {
            Some(Err(err)) => Err(self.rx.local("setting the owner, mode and attributes", err)),
            _ => rustix::fs::utimensat(parent, temp.as_str(), &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|err| self.rx.local("setting the mtime", err.into()))
                .and_then(|()| {
                    let replace = self.rx.config.force || self.in_stage(&e.path);
                    self.rx.publish_over(parent, &temp, e.base(), replace)
                }),
        };
        if let Err(err) = published {
            let _ = rustix::fs::unlinkat(parent, temp.as_str(), AtFlags::empty());
            return Answer::Refused(err.to_string());
        }
        Answer::Done
    }
}

/// As [`Session::differs`] with `plan` (what would be set on `e`), attributes aside.
fn differs_but_attrs(
    st: &rustix::fs::Stat,
    e: &Entry,
    plan: Option<&Plan>,
    replacing: bool,
) -> bool {
    let mode = plan.map_or(e.mode & KEPT_MODE, |p| p.mode);
    let is_link = matches!(e.kind, Kind::Symlink { .. });
    let timed = replacing || matches!(e.kind, Kind::File { .. });
    (timed && (st.st_mtime, st.st_mtime_nsec as u32) != e.mtime)
        || (!is_link && st.st_mode & 0o7777 != mode)
        || plan.is_some_and(|p| p.owner.is_some_and(|o| o != (st.st_uid, st.st_gid)))
}

/// The device number a device entry is made with; 0 for anything else.
fn node_dev(kind: &Kind) -> rustix::fs::Dev {
    match kind {
        Kind::Device { major, minor, .. } => rustix::fs::makedev(*major, *minor),
        _ => 0,
    }
}
