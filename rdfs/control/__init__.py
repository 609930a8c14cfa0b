"""What users ask of the mount: actions (add/delete) and the ``.rdfs/`` control files."""
