"""Helpers of ``scripts/bench``: servers, network namespace, peers, test files, measurements, table.

Everything runs on this machine: nginx and a delaying proxy on 127.0.0.1 and inside a network
namespace the suite creates (addresses from 198.18.0.0/15, the range reserved for benchmarks),
the RD emulator on 127.0.0.1, rdfs and rclone mounts under a temporary directory.
"""
