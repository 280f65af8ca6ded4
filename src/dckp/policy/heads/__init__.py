"""Policy heads: one interface (`Head`) and a registry that every module of this package adds itself to (see
`dckp.policy.heads.base`)."""
