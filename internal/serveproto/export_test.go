package serveproto

// CmdBuildDerivation is the BuildDerivation command, for the golden tests.
const CmdBuildDerivation = cmdBuildDerivation

// OnReply sets a function called after each command's reply is flushed.
func (s *Server) OnReply(f func(cmd uint64)) { s.onReply = f }
