"""The metadata database's schema: the fixed top of the tree and the append-only migrations."""

from __future__ import annotations

from rdfs.store import keys

ROOT_INODE = 1
TORRENTS_INODE = 2
DOWNLOADS_INODE = 3
CONTROL_INODE = 4
FIRST_DYNAMIC_INODE = 1000

TORRENTS_DIR = "torrents"
DOWNLOADS_DIR = "downloads"
CONTROL_DIR = ".rdfs"

# (inode, key, parent, name): the fixed top of the tree.
FIXED_DIRS = (
    (ROOT_INODE, keys.ROOT, 0, ""),  # the root has no parent (0)
    (TORRENTS_INODE, keys.TORRENTS, ROOT_INODE, TORRENTS_DIR),
    (DOWNLOADS_INODE, keys.DOWNLOADS, ROOT_INODE, DOWNLOADS_DIR),
    (CONTROL_INODE, keys.CONTROL, ROOT_INODE, CONTROL_DIR),
)

_SCHEMA_V1 = f"""
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,  -- setting name: schema_version, user_id
    value TEXT NOT NULL      -- its value as text
);

CREATE TABLE torrents (
    id         TEXT PRIMARY KEY,  -- RD torrent id (13 characters A-Z2-7)
    filename   TEXT NOT NULL,     -- RD's name of the torrent (the file name for single-file
                                  -- selections)
    hash       TEXT NOT NULL,     -- info hash, lower case
    bytes      INTEGER NOT NULL,  -- size of the selected files
    host       TEXT NOT NULL,     -- hoster the links point to
    split      INTEGER NOT NULL,  -- RD split size in GB
    progress   REAL NOT NULL,     -- download progress, 0-100
    status     TEXT NOT NULL,     -- RD status (downloaded, downloading, dead, ...)
    added      REAL,              -- UNIX time the torrent was added
    ended      REAL,              -- UNIX time it finished; NULL while active
    links      TEXT NOT NULL,     -- JSON array of hoster links, as /torrents lists them
    row_key    TEXT NOT NULL,     -- fingerprint of all listed fields (skip rewriting unchanged
                                  -- rows)
    list_key   TEXT NOT NULL,     -- fingerprint of the listed fields that shape the file tree
    info_key   TEXT,              -- list_key at the time /torrents/info was stored; NULL = files
                                  -- never fetched
    info_error TEXT               -- last error fetching /torrents/info; NULL when fine
);
CREATE INDEX torrents_status ON torrents(status, added);

CREATE TABLE files (
    torrent_id TEXT NOT NULL,     -- torrents.id
    file_id    INTEGER NOT NULL,  -- RD file id inside the torrent
    path       TEXT NOT NULL,     -- path inside the torrent as RD gives it (leading "/")
    bytes      INTEGER NOT NULL,  -- file size
    selected   INTEGER NOT NULL,  -- 1 when selected for download
    link       TEXT,              -- its hoster link (links[i] of the i-th selected file); NULL if
                                  -- packed or missing
    PRIMARY KEY (torrent_id, file_id)
) WITHOUT ROWID;

CREATE TABLE downloads (
    id        TEXT PRIMARY KEY,  -- RD download id
    filename  TEXT NOT NULL,     -- file name
    filesize  INTEGER NOT NULL,  -- size in bytes
    link      TEXT NOT NULL,     -- the original hoster link
    host      TEXT NOT NULL,     -- hoster domain
    download  TEXT NOT NULL,     -- the generated (unrestricted) URL
    mime_type TEXT NOT NULL,     -- MIME type RD reports
    generated REAL               -- UNIX time the link was generated
);
CREATE INDEX downloads_link ON downloads(link);

CREATE TABLE links (
    hoster_link TEXT PRIMARY KEY,  -- the hoster link that was unrestricted
    url         TEXT NOT NULL,     -- the direct download URL RD generated
    download_id TEXT NOT NULL,     -- id of the /downloads entry the unrestrict created
    filesize    INTEGER NOT NULL,  -- size RD reported
    expires_at  REAL NOT NULL      -- UNIX time after which the URL is assumed dead
);
CREATE INDEX links_expiry ON links(expires_at);

CREATE TABLE inodes (
    inode INTEGER PRIMARY KEY AUTOINCREMENT,  -- inode number, never reused
    key   TEXT NOT NULL UNIQUE                -- stable identity (t:<id>, f:<id>:<file>, d:<id>,
                                              -- dir:<id>:<path>, ...)
);

CREATE TABLE entries (
    inode         INTEGER PRIMARY KEY,         -- inodes.inode
    parent        INTEGER NOT NULL,            -- inode of the directory holding it (0 for the root)
    name          TEXT NOT NULL,               -- safe name (NFC, no "/" or NUL, <= 255 bytes,
                                               -- unique in parent)
    kind          TEXT NOT NULL CHECK (kind IN ('dir', 'file')),  -- entry type
    size          INTEGER NOT NULL,            -- st_size (0 for directories)
    mtime         REAL NOT NULL,               -- st_mtime, UNIX seconds (RD ended/added/generated)
    nlink         INTEGER NOT NULL,            -- st_nlink (2 + subdirectories for a directory)
    torrent_id    TEXT,                        -- torrent this entry belongs to (its directory and
                                               -- everything in it)
    file_id       INTEGER,                     -- RD file id for a torrent file
    download_id   TEXT,                        -- RD download id for an entry of downloads/
    hoster_link   TEXT,                        -- hoster link to unrestrict to read the file
    link_offset   INTEGER NOT NULL DEFAULT 0,  -- byte offset of this file inside the link's content
    files_pending INTEGER NOT NULL DEFAULT 0   -- 1 for a torrent directory whose file list is not
                                               -- cached yet
);
CREATE UNIQUE INDEX entries_name ON entries(parent, name);
CREATE INDEX entries_parent_inode ON entries(parent, inode);
CREATE INDEX entries_torrent ON entries(torrent_id) WHERE torrent_id IS NOT NULL;
CREATE INDEX entries_link ON entries(hoster_link) WHERE hoster_link IS NOT NULL;

CREATE TABLE sync_state (
    key   TEXT PRIMARY KEY,  -- last_sync, last_outcome, health, pending_deletions, ...
    value TEXT NOT NULL      -- JSON value
);

INSERT INTO inodes (inode, key) VALUES {", ".join(f"({i}, '{k}')" for i, k, _, _ in FIXED_DIRS)};
INSERT INTO entries (inode, parent, name, kind, size, mtime, nlink) VALUES
    {", ".join(f"({i}, {p}, '{n}', 'dir', 0, 0, 2)" for i, _, p, n in FIXED_DIRS)};
UPDATE entries SET nlink = 5 WHERE inode = {ROOT_INODE};
UPDATE sqlite_sequence SET seq = {FIRST_DYNAMIC_INODE - 1} WHERE name = 'inodes';
"""

_SCHEMA_V2 = """
CREATE TABLE archives (
    hoster_link TEXT PRIMARY KEY,  -- link of a RAR archive RD packed a torrent into
    members     TEXT,              -- JSON list of its members (rdfs.data.rar.Member fields); NULL
                                   -- on error
    error       TEXT,              -- why the members could not be listed; NULL when fine
    indexed     REAL NOT NULL      -- UNIX time of the attempt
);
"""

# The removal record: every torrent removed (by RD or by the user), to re-add what RD took.
_SCHEMA_REMOVALS = """
CREATE TABLE removals (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    time      REAL NOT NULL,     -- UNIX time of the removal
    id        TEXT NOT NULL,     -- RD's torrent id
    name      TEXT NOT NULL,     -- its filename as listed
    hash      TEXT NOT NULL,     -- info hash: magnet:?xt=urn:btih:<hash> re-adds it
    bytes     INTEGER NOT NULL,
    selection TEXT,              -- JSON [[file id, path, bytes], ...] selected; NULL if never
                                 -- fetched
    by        TEXT NOT NULL,     -- 'rd' (gone from RD's listing) or 'user'
    reason    TEXT NOT NULL
);
"""

# Migration i (0-based) takes the schema from version i to i + 1. Append, never edit.
MIGRATIONS: list[str] = [_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_REMOVALS]
SCHEMA_VERSION = len(MIGRATIONS)
