package metrics

import "github.com/prometheus/client_golang/prometheus"

// What the byte counters count. Two views of clients' traffic:
//
//   - nixfarm_ssh_bytes_in_total and nixfarm_ssh_bytes_out_total
//     (SSHBytes): every byte of every command's stdin and stdout on the
//     client listener: protocol framing, metadata, NARs, and the output of
//     commands such as `nixfarm builds`, counted as each command ends.
//   - nixfarm_build_bytes_uploaded_total and
//     nixfarm_build_bytes_downloaded_total (BuildBytes): the bytes of store
//     path contents (NARs) that protocol sessions attributed to build
//     records, counted as each is written to its record. They measure the
//     same thing as the records' bytes_uploaded and bytes_downloaded: their
//     increase over a period is the sum of those columns over the builds
//     of that period (builds pruned since included), never more than the
//     SSH counters' increase.

// traffic holds the build byte counters.
type traffic struct {
	uploaded   prometheus.Counter
	downloaded prometheus.Counter
}

func (f *Farm) registerTraffic() {
	f.traffic.uploaded = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "build_bytes_uploaded_total",
		Help: "Bytes of store path contents clients uploaded for builds (NARs sent before a build request), as added to the build records."})
	f.traffic.downloaded = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "build_bytes_downloaded_total",
		Help: "Bytes of store path contents clients downloaded from builds (output NARs fetched after the request), as added to the build records."})
	f.reg.MustRegister(f.traffic.uploaded, f.traffic.downloaded)
}

// BuildBytes counts the bytes a session added to a build record.
func (f *Farm) BuildBytes(uploaded, downloaded int64) {
	if f == nil {
		return
	}
	f.traffic.uploaded.Add(float64(uploaded))
	f.traffic.downloaded.Add(float64(downloaded))
}
