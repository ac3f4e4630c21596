package worker

import (
	"errors"
	"fmt"
	"os/exec"
	"syscall"
)

// tryNamespaces starts /bin/true in new mount, PID, IPC, UTS and network
// namespaces, as Nix 2.8 clones its builder (and in a user namespace, as
// Nix does when it does not run as root).
func tryNamespaces(userNS bool) error {
	bin, err := exec.LookPath("true")
	if err != nil {
		return err
	}
	cmd := exec.Command(bin)
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET}
	if userNS {
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: syscall.Geteuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: syscall.Getegid(), Size: 1}}
	}
	cmd.SysProcAttr = attr
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return fmt.Errorf("true in new namespaces exited with status %d", exit.ExitCode())
		}
		return err
	}
	return nil
}
