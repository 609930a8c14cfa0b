"""The data path: links, downloads, block cache, read-ahead, reader handles."""
