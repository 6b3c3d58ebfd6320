/** Library entry point for embedding dpa in a migration agent. */
export {};
