"""In process: the Operations handlers, the syncer, the reader and the client against the emulator."""
