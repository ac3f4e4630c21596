// Package daemonproto speaks Nix's worker (daemon) protocol, the protocol
// of `nix-daemon --stdio` that Nix uses for ssh-ng:// stores and builders.
// It holds both ends: Server answers stock Nix clients from the farm store
// and coordinator, and Client drives a daemon-protocol server, for tests
// and for workers.
//
// Clients from protocol 1.21 (Nix 2.3) to 1.38 (Nix 2.24 and later) are
// accepted. The server advertises 1.38 and gates every field on the lower
// of the two versions.
package daemonproto

import (
	"fmt"

	"github.com/nixfarm/nixfarm/internal/publicerr"
)

// Handshake magic numbers and versions.
const (
	Magic1 = 0x6e697863 // client → server
	Magic2 = 0x6478696f // server → client

	// Version is the newest protocol version nixfarm implements: 1.38.
	Version = 1<<8 | 38
	// MinVersion is the oldest client accepted: 1.21, Nix 2.3.
	MinVersion = 1<<8 | 21
)

// Log frame codes: the server's messages between a request and its reply.
const (
	stderrNext          = 0x6f6c6d67
	stderrRead          = 0x64617461
	stderrWrite         = 0x64617416
	stderrLast          = 0x616c7473
	stderrError         = 0x63787470
	stderrStartActivity = 0x53545254
	stderrStopActivity  = 0x53544f50
	stderrResult        = 0x52534c54
)

// Activity and result types used in log frames (Nix's logging.hh).
const (
	actCopyPath      = 100
	actBuild         = 105
	actBuildWaiting  = 111
	resBuildLogLine  = 101
	lvlError         = 0
	lvlInfo          = 3
	fieldTypeInt     = 0
	fieldTypeString  = 1
	maxFrame         = 64 << 20
	maxInlineContent = 64 << 20
)

// Op is a worker-protocol operation code.
type Op uint64

// The operations, numbered as in Nix's worker-protocol.hh.
const (
	OpIsValidPath                 Op = 1
	OpHasSubstitutes              Op = 3
	OpQueryPathHash               Op = 4
	OpQueryReferences             Op = 5
	OpQueryReferrers              Op = 6
	OpAddToStore                  Op = 7
	OpAddTextToStore              Op = 8
	OpBuildPaths                  Op = 9
	OpEnsurePath                  Op = 10
	OpAddTempRoot                 Op = 11
	OpAddIndirectRoot             Op = 12
	OpSyncWithGC                  Op = 13
	OpFindRoots                   Op = 14
	OpExportPath                  Op = 16
	OpQueryDeriver                Op = 18
	OpSetOptions                  Op = 19
	OpCollectGarbage              Op = 20
	OpQuerySubstitutablePathInfo  Op = 21
	OpQueryDerivationOutputs      Op = 22
	OpQueryAllValidPaths          Op = 23
	OpQueryFailedPaths            Op = 24
	OpClearFailedPaths            Op = 25
	OpQueryPathInfo               Op = 26
	OpImportPaths                 Op = 27
	OpQueryDerivationOutputNames  Op = 28
	OpQueryPathFromHashPart       Op = 29
	OpQuerySubstitutablePathInfos Op = 30
	OpQueryValidPaths             Op = 31
	OpQuerySubstitutablePaths     Op = 32
	OpQueryValidDerivers          Op = 33
	OpOptimiseStore               Op = 34
	OpVerifyStore                 Op = 35
	OpBuildDerivation             Op = 36
	OpAddSignatures               Op = 37
	OpNarFromPath                 Op = 38
	OpAddToStoreNar               Op = 39
	OpQueryMissing                Op = 40
	OpQueryDerivationOutputMap    Op = 41
	OpRegisterDrvOutput           Op = 42
	OpQueryRealisation            Op = 43
	OpAddMultipleToStore          Op = 44
	OpAddBuildLog                 Op = 45
	OpBuildPathsWithResults       Op = 46
	OpAddPermRoot                 Op = 47
)

var opNames = map[Op]string{
	OpIsValidPath: "IsValidPath", OpHasSubstitutes: "HasSubstitutes", OpQueryPathHash: "QueryPathHash",
	OpQueryReferences: "QueryReferences", OpQueryReferrers: "QueryReferrers", OpAddToStore: "AddToStore",
	OpAddTextToStore: "AddTextToStore", OpBuildPaths: "BuildPaths", OpEnsurePath: "EnsurePath",
	OpAddTempRoot: "AddTempRoot", OpAddIndirectRoot: "AddIndirectRoot", OpSyncWithGC: "SyncWithGC",
	OpFindRoots: "FindRoots", OpExportPath: "ExportPath", OpQueryDeriver: "QueryDeriver",
	OpSetOptions: "SetOptions", OpCollectGarbage: "CollectGarbage",
	OpQuerySubstitutablePathInfo: "QuerySubstitutablePathInfo", OpQueryDerivationOutputs: "QueryDerivationOutputs",
	OpQueryAllValidPaths: "QueryAllValidPaths", OpQueryFailedPaths: "QueryFailedPaths",
	OpClearFailedPaths: "ClearFailedPaths", OpQueryPathInfo: "QueryPathInfo", OpImportPaths: "ImportPaths",
	OpQueryDerivationOutputNames: "QueryDerivationOutputNames", OpQueryPathFromHashPart: "QueryPathFromHashPart",
	OpQuerySubstitutablePathInfos: "QuerySubstitutablePathInfos", OpQueryValidPaths: "QueryValidPaths",
	OpQuerySubstitutablePaths: "QuerySubstitutablePaths", OpQueryValidDerivers: "QueryValidDerivers",
	OpOptimiseStore: "OptimiseStore", OpVerifyStore: "VerifyStore", OpBuildDerivation: "BuildDerivation",
	OpAddSignatures: "AddSignatures", OpNarFromPath: "NarFromPath", OpAddToStoreNar: "AddToStoreNar",
	OpQueryMissing: "QueryMissing", OpQueryDerivationOutputMap: "QueryDerivationOutputMap",
	OpRegisterDrvOutput: "RegisterDrvOutput", OpQueryRealisation: "QueryRealisation",
	OpAddMultipleToStore: "AddMultipleToStore", OpAddBuildLog: "AddBuildLog",
	OpBuildPathsWithResults: "BuildPathsWithResults", OpAddPermRoot: "AddPermRoot",
}

func (op Op) String() string {
	if n, ok := opNames[op]; ok {
		return n
	}
	return fmt.Sprintf("op %d", uint64(op))
}

func minor(v uint64) uint64 { return v & 0xff }
func major(v uint64) uint64 { return v & 0xff00 }

// serverFeatures are the protocol features (1.38 on) nixfarm offers: none
// yet. Nix 2.34, the newest client tested, offers none either.
var serverFeatures = []string{}

func versionString(v uint64) string { return fmt.Sprintf("%d.%d", major(v)>>8, minor(v)) }

// ErrProtocol is wrapped by errors caused by what the peer sent. On the
// server they end the connection after the error is reported.
var ErrProtocol = publicerr.Sentinel("daemon protocol error")

// RemoteError is an error the other side reported with STDERR_ERROR.
type RemoteError struct {
	Message string
	// Status is the exit status older protocols carry (below 1.26).
	Status uint64
}

func (e *RemoteError) Error() string { return e.Message }
