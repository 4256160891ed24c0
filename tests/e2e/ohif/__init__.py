"""The OHIF end-to-end harness: install (npm), the static site, the browser driver (drive.mjs)."""
