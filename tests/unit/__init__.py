"""Pure logic: no emulator, no mount."""
