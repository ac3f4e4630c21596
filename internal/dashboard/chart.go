package dashboard

import (
	"fmt"
	"html/template"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/nixfarm/nixfarm/internal/records"
)

// The usage chart: stacked bars, one per UTC bucket, a colour per
// account, drawn by the server as SVG (templates/chart.html). Buckets
// without builds (records.Usage leaves them out) are drawn as zero.

// Chart geometry, in the SVG's own units (it scales to its box).
const (
	chartW, chartH      = 640.0, 300.0
	plotLeft, plotRight = 64.0, 16.0
	plotTop, plotBottom = 16.0, 36.0
	maxXLabels          = 8
	yTicks              = 4
)

var palette = []string{"#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#db2777", "#65a30d"}

type bar struct {
	X, Y, W, H float64
	Fill       string
	Title      string
}

type tick struct {
	X, Y  float64
	Label string
}

type legendItem struct {
	Account string
	Fill    string
	Total   string
}

// chart is what templates/chart.html draws.
type chart struct {
	Title               string
	W, H                float64
	PlotLeft, PlotRight float64
	PlotTop, PlotBase   float64
	Bars                []bar
	YTicks, XLabels     []tick
	Legend              []legendItem
	Empty               bool
}

// bucketStarts returns the UTC starts of the buckets of length bucket
// that cover the period of length before now (aligned as records.Usage
// aligns them: multiples of the bucket since the Unix epoch).
func bucketStarts(now time.Time, length, bucket time.Duration) []time.Time {
	n := int(length / bucket)
	last := time.UnixMilli(now.UnixMilli() / bucket.Milliseconds() * bucket.Milliseconds()).UTC()
	out := make([]time.Time, n)
	for i := range out {
		out[i] = last.Add(-time.Duration(n-1-i) * bucket)
	}
	return out
}

// newChart stacks value of each account's buckets over starts.
// Integer values (counts) get whole-number ticks.
func newChart(title string, starts []time.Time, labelFormat string, u *records.Usage, value func(*records.Totals) float64, format func(float64) string, integer bool) chart {
	c := chart{Title: title, W: chartW, H: chartH, PlotLeft: plotLeft, PlotRight: chartW - plotRight, PlotTop: plotTop, PlotBase: chartH - plotBottom}
	index := map[int64]int{}
	for i, s := range starts {
		index[s.Unix()] = i
	}
	// values[account][bucket], zero where the account had no builds.
	values := make([][]float64, len(u.Accounts))
	stack := make([]float64, len(starts))
	for a := range u.Accounts {
		values[a] = make([]float64, len(starts))
		total := 0.0
		for _, b := range u.Accounts[a].Buckets {
			if i, ok := index[b.Start.Unix()]; ok {
				v := value(&b.Totals)
				values[a][i] = v
				stack[i] += v
				total += v
			}
		}
		c.Legend = append(c.Legend, legendItem{Account: u.Accounts[a].Account, Fill: palette[a%len(palette)], Total: format(total)})
	}
	top := 0.0
	for _, v := range stack {
		top = math.Max(top, v)
	}
	c.Empty = top == 0
	step := niceCeil(top / yTicks)
	if integer {
		step = math.Ceil(step)
	}
	top = step * yTicks
	plotH := c.PlotBase - c.PlotTop
	slot := (c.PlotRight - c.PlotLeft) / float64(max(len(starts), 1))
	for i := 0; i <= yTicks; i++ {
		v := step * float64(i)
		c.YTicks = append(c.YTicks, tick{X: c.PlotLeft - 8, Y: c.PlotBase - plotH*float64(i)/yTicks, Label: format(v)})
	}
	every := (len(starts) + maxXLabels - 1) / maxXLabels
	for i, s := range starts {
		if i%every == 0 {
			c.XLabels = append(c.XLabels, tick{X: c.PlotLeft + slot*(float64(i)+0.5), Y: c.PlotBase + 20, Label: s.Format(labelFormat)})
		}
		y := c.PlotBase
		for a := range values {
			v := values[a][i]
			if v == 0 {
				continue
			}
			h := plotH * v / top
			y -= h
			c.Bars = append(c.Bars, bar{X: c.PlotLeft + slot*float64(i) + slot*0.15, Y: y, W: slot * 0.7, H: h, Fill: palette[a%len(palette)],
				Title: fmt.Sprintf("%s, %s UTC: %s", u.Accounts[a].Account, s.Format("Jan 2 15:04"), format(v))})
		}
	}
	return c
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten (1 for 0).
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func formatCount(v float64) string {
	if v == math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

// formatCPU writes CPU seconds in seconds, minutes or hours.
func formatCPU(s float64) string {
	g := func(v float64) string { return strconv.FormatFloat(v, 'g', 3, 64) }
	switch {
	case s == 0:
		return "0"
	case s < 60:
		return g(s) + " s"
	case s < 3600:
		return g(s/60) + " min"
	}
	return g(s/3600) + " h"
}

// funcs are the templates' helpers.
func funcs(now func() time.Time) template.FuncMap {
	return template.FuncMap{
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			return humanDuration(now().Sub(t)) + " ago"
		},
		"dur":       humanDuration,
		"secs":      func(s float64) string { return humanDuration(time.Duration(s * float64(time.Second))) },
		"bytes":     func(n int64) string { return humanBytes(n) },
		"ubytes":    func(n uint64) string { return humanBytes(int64(n)) },
		"utc":       func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
		"buildTime": func(r *records.Record) string { return humanDuration(r.BuildTime(now())) },
		"queueTime": func(r *records.Record) string { return humanDuration(r.QueueTime(now())) },
		"live":      func(r *records.Record) bool { return !r.Status.Final() },
		"cpu": func(s float64) string {
			if s == 0 {
				return "—"
			}
			return strconv.FormatFloat(s, 'f', 1, 64) + " s"
		},
		"join":    strings.Join,
		"cpuTime": formatCPU,
		"pct": func(a, b int) int {
			if b <= 0 {
				return 0
			}
			return min(100, a*100/b)
		},
		"fmt1": func(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) },
		"half": func(v float64) float64 { return v / 2 },
		"f":    func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) },
	}
}

func humanDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
