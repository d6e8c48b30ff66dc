package deploy

// The monitoring files, tested without a container engine, Prometheus or
// Grafana:
//
//   - the Grafana dashboard parses, every panel queries Prometheus through
//     the dashboard's data source variable and has a description, no two
//     panels overlap, and the README says what each panel answers
//     (TestDashboard);
//   - the metric names and label values the dashboard's PromQL queries are
//     extracted (promqlSelectors, TestPromQLSelectors) and checked against
//     /metrics of the ldlm binary run as docker-compose.yml runs it, in
//     TestComposeStack (checkDashboardMetrics);
//   - the compose file's monitoring profile wires Prometheus to the ldlm
//     service's metrics port and Grafana to Prometheus and the dashboard,
//     and leaves the default stack alone (TestMonitoringProfile).

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"

	"github.com/ldlm-io/ldlm/internal/metricstest"
)

// dashboardPath is the dashboard, relative to the repository.
const dashboardPath = "deploy/grafana/dashboards/ldlm.json"

// targetLabels are added by Prometheus when it scrapes, so /metrics does
// not have them.
var targetLabels = []string{"job", "instance"}

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Datasource  struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

func loadDashboard(t testing.TB) dashboard {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), filepath.FromSlash(dashboardPath)))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// allPanels lists the panels, those inside rows included, rows excluded.
func (d dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			out = append(out, p)
		}
	}
	walk(d.Panels)
	return out
}

// queries lists every PromQL expression of the dashboard, with where it
// is: the panels' targets and the template variables' label_values.
func (d dashboard) queries(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range d.allPanels() {
		for i, target := range p.Targets {
			out[fmt.Sprintf("panel %q target %d", p.Title, i)] = target.Expr
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*[a-zA-Z_]\w*\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Fatalf("variable %s: query %s", v.Name, v.Query)
			}
		}
		m := labelValues.FindStringSubmatch(strings.TrimSpace(q.Query))
		if m == nil {
			t.Fatalf("variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, q.Query)
		}
		out["variable "+v.Name] = m[1]
	}
	return out
}

func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("the dashboard needs a uid and a title: %q, %q", d.UID, d.Title)
	}
	hasDatasourceVar := slices.ContainsFunc(d.Templating.List, func(v struct {
		Name  string          `json:"name"`
		Type  string          `json:"type"`
		Query json.RawMessage `json:"query"`
	}) bool {
		return v.Name == "datasource" && v.Type == "datasource" && string(v.Query) == `"prometheus"`
	})
	if !hasDatasourceVar {
		t.Error(`the dashboard has no "datasource" variable of type prometheus: imported elsewhere it would not find its data source`)
	}

	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	panels := d.allPanels()
	if len(panels) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	ids := map[int]string{}
	for i, p := range panels {
		switch {
		case p.Title == "":
			t.Errorf("panel %d has no title", p.ID)
		case p.Description == "":
			t.Errorf("panel %q has no description (Grafana shows it as the panel's help)", p.Title)
		case p.Datasource.UID != "${datasource}":
			t.Errorf("panel %q: data source %q, want ${datasource}", p.Title, p.Datasource.UID)
		case len(p.Targets) == 0:
			t.Errorf("panel %q queries nothing", p.Title)
		}
		if other, ok := ids[p.ID]; ok {
			t.Errorf("panels %q and %q have the same id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if !strings.Contains(string(readme), "| "+p.Title+" |") {
			t.Errorf("README.md does not say what the panel %q answers (a table row starting | %s |)", p.Title, p.Title)
		}
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: grid position %+v outside Grafana's 24 columns", p.Title, g)
		}
		for _, q := range panels[:i] {
			h := q.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap", q.Title, p.Title)
			}
		}
	}
	for where, expr := range d.queries(t) {
		sels, err := promqlSelectors(expr)
		if err != nil {
			t.Errorf("%s: %v", where, err)
		} else if len(sels) == 0 {
			t.Errorf("%s: %q queries no metric", where, expr)
		}
	}
}

// checkDashboardMetrics checks that every metric the dashboard queries is
// exported by the /metrics at url, and every label value it selects on
// exists there: a typo in a name or a reason would leave a panel empty.
func checkDashboardMetrics(t *testing.T, url string) {
	t.Helper()
	families := metricstest.Scrape(t, url)
	d := loadDashboard(t)
	checked := map[string]bool{}
	for where, expr := range d.queries(t) {
		sels, err := promqlSelectors(expr)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		for _, s := range sels {
			mf, ok := family(families, s.metric)
			if !ok {
				t.Errorf("%s: %s is not exported by %s", where, s.metric, url)
				continue
			}
			checked[s.metric] = true
			for _, m := range s.matchers {
				if slices.Contains(targetLabels, m.label) || strings.Contains(m.value, "$") {
					continue
				}
				for _, v := range m.values() {
					if !hasLabelValue(mf, m.label, v) {
						t.Errorf("%s: %s has no series with %s=%q", where, s.metric, m.label, v)
					}
				}
			}
		}
	}
	t.Logf("the dashboard's %d metrics are exported: %v", len(checked), mapKeys(checked))
}

// family finds the family of a series name: the name itself, or a
// histogram's or summary's _bucket, _sum or _count series.
func family(families map[string]*dto.MetricFamily, name string) (*dto.MetricFamily, bool) {
	if mf, ok := families[name]; ok {
		return mf, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		mf, ok := families[base]
		if !ok {
			continue
		}
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			return mf, true
		case dto.MetricType_SUMMARY:
			return mf, suffix != "_bucket"
		}
	}
	return nil, false
}

func hasLabelValue(mf *dto.MetricFamily, label, value string) bool {
	if mf.GetType() == dto.MetricType_HISTOGRAM && label == "le" {
		return true // every bucket bound is a value of le
	}
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label && lp.GetValue() == value {
				return true
			}
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// Metric names in PromQL

// selector is a metric name in a PromQL expression and its label matchers.
type selector struct {
	metric   string
	matchers []matcher
}

type matcher struct {
	label, op, value string
}

// values are the label values a matcher selects that must exist: the
// value of an = matcher, each alternative of an =~ matcher that is a plain
// a|b|c list; none for the negative matchers or another regular expression.
func (m matcher) values() []string {
	switch m.op {
	case "=":
		return []string{m.value}
	case "=~":
		alts := strings.Split(m.value, "|")
		for _, a := range alts {
			if a == "" || regexp.QuoteMeta(a) != a {
				return nil
			}
		}
		return alts
	}
	return nil
}

// promqlKeywords are the identifiers of PromQL that are not metric names
// although no parenthesis follows them; aggregations are here because
// `sum by (le) (…)` puts a clause between the name and its parenthesis.
var promqlKeywords = []string{
	"and", "or", "unless", "bool", "offset", "atan2",
	"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
	"bottomk", "topk", "quantile", "limitk", "limit_ratio",
}

// promqlLabelLists are the keywords followed by a parenthesised list of
// label names.
var promqlLabelLists = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}

// promqlSelectors returns the metric selectors of a PromQL expression as a
// Grafana dashboard writes it ($variables allowed), in order. It knows
// enough of PromQL's lexical structure for that: identifiers followed by a
// parenthesis are functions, keywords and the label lists of by, without,
// on, ignoring, group_left and group_right are not metrics, strings,
// numbers, durations, ranges and variables are skipped, and a {…} after a
// metric name holds its matchers.
func promqlSelectors(expr string) ([]selector, error) {
	var out []selector
	i := 0
	skipSpace := func() {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
	}
	for i < len(expr) {
		c := expr[i]
		switch {
		case strings.ContainsRune(" \t\r\n", rune(c)):
			i++
		case c == '"' || c == '\'' || c == '`':
			end, err := stringEnd(expr, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '[':
			end := strings.IndexByte(expr[i:], ']')
			if end < 0 {
				return nil, fmt.Errorf("%q: unclosed [ at %d", expr, i)
			}
			i += end + 1
		case c == '$':
			i++
			if i < len(expr) && expr[i] == '{' {
				end := strings.IndexByte(expr[i:], '}')
				if end < 0 {
					return nil, fmt.Errorf("%q: unclosed ${ at %d", expr, i)
				}
				i += end + 1
				continue
			}
			for i < len(expr) && isIdentChar(expr[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			// A number (0.99, 1e-9, 0x1f) or a duration (5m, 1h30m).
			for i < len(expr) && (isIdentChar(expr[i]) || expr[i] == '.' ||
				(expr[i] == '-' || expr[i] == '+') && (expr[i-1] == 'e' || expr[i-1] == 'E')) {
				i++
			}
		case c == '{':
			// A selector without a metric name before it.
			ms, end, err := parseMatchers(expr, i)
			if err != nil {
				return nil, err
			}
			i = end
			s := selector{}
			for _, m := range ms {
				if m.label == "__name__" && m.op == "=" {
					s.metric = m.value
				} else {
					s.matchers = append(s.matchers, m)
				}
			}
			if s.metric == "" {
				return nil, fmt.Errorf("%q: a selector without a metric name", expr)
			}
			out = append(out, s)
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdentChar(expr[i]) {
				i++
			}
			word := expr[start:i]
			skipSpace()
			next := byte(0)
			if i < len(expr) {
				next = expr[i]
			}
			switch {
			case slices.Contains(promqlLabelLists, word):
				if next == '(' {
					end := strings.IndexByte(expr[i:], ')')
					if end < 0 {
						return nil, fmt.Errorf("%q: unclosed %s (", expr, word)
					}
					i += end + 1
				}
			case slices.Contains(promqlKeywords, word), next == '(':
				// A keyword, aggregation or function.
			default:
				s := selector{metric: word}
				if next == '{' {
					ms, end, err := parseMatchers(expr, i)
					if err != nil {
						return nil, err
					}
					i = end
					s.matchers = ms
				}
				out = append(out, s)
			}
		default:
			i++ // an operator, a comma, a parenthesis
		}
	}
	return out, nil
}

// parseMatchers parses the {…} at expr[i] and returns its matchers and the
// index after the closing brace.
func parseMatchers(expr string, i int) ([]matcher, int, error) {
	var out []matcher
	i++ // {
	for {
		for i < len(expr) && strings.ContainsRune(" \t\r\n,", rune(expr[i])) {
			i++
		}
		if i >= len(expr) {
			return nil, 0, fmt.Errorf("%q: unclosed {", expr)
		}
		if expr[i] == '}' {
			return out, i + 1, nil
		}
		start := i
		for i < len(expr) && isIdentChar(expr[i]) {
			i++
		}
		label := expr[start:i]
		for i < len(expr) && expr[i] == ' ' {
			i++
		}
		opStart := i
		for i < len(expr) && strings.ContainsRune("=!~", rune(expr[i])) {
			i++
		}
		op := expr[opStart:i]
		for i < len(expr) && expr[i] == ' ' {
			i++
		}
		if label == "" || !slices.Contains([]string{"=", "!=", "=~", "!~"}, op) || i >= len(expr) || !strings.ContainsRune("\"'`", rune(expr[i])) {
			return nil, 0, fmt.Errorf("%q: a label matcher at %d is not LABEL OP \"VALUE\"", expr, start)
		}
		end, err := stringEnd(expr, i)
		if err != nil {
			return nil, 0, err
		}
		value := expr[i+1 : end-1]
		if expr[i] != '`' {
			value = strings.NewReplacer(`\\`, `\`, `\"`, `"`, `\'`, `'`).Replace(value)
		}
		out = append(out, matcher{label: label, op: op, value: value})
		i = end
	}
}

// stringEnd returns the index after the string literal that starts at
// expr[i].
func stringEnd(expr string, i int) (int, error) {
	quote := expr[i]
	for j := i + 1; j < len(expr); j++ {
		switch {
		case expr[j] == '\\' && quote != '`':
			j++
		case expr[j] == quote:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("%q: unclosed string at %d", expr, i)
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdentChar(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

func TestPromQLSelectors(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want string // metric{label op value,…} …
	}{
		{`ldlm_locks`, `ldlm_locks{}`},
		{`sum(ldlm_locks{job=~"$job", instance=~"$instance"})`, `ldlm_locks{job=~$job,instance=~$instance}`},
		{`sum by (reason) (rate(ldlm_releases_total{reason!="released"}[$__rate_interval]))`, `ldlm_releases_total{reason!=released}`},
		{`histogram_quantile(0.99, sum by (le) (rate(ldlm_wait_seconds_bucket[5m])))`, `ldlm_wait_seconds_bucket{}`},
		{`sum(rate(a_sum[1m])) / sum(rate(a_count[1m])) > bool 0.5`, `a_sum{} a_count{}`},
		{`time() - max(process_start_time_seconds)`, `process_start_time_seconds{}`},
		{`sum(x) without (instance) * on (job) group_left (version) y offset 5m`, `x{} y{}`},
		{`{__name__="go_goroutines", job="a"}`, `go_goroutines{job=a}`},
		{`count(up{job='a\'b'}) and vector(1e-9)`, `up{job=a'b}`},
		{`rate(m{l=~"a|b"}[${__range}]) + 2 * m2`, `m{l=~a|b} m2{}`},
	} {
		sels, err := promqlSelectors(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		var got []string
		for _, s := range sels {
			var ms []string
			for _, m := range s.matchers {
				ms = append(ms, m.label+m.op+m.value)
			}
			got = append(got, s.metric+"{"+strings.Join(ms, ",")+"}")
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s: got %q, want %q", tc.expr, strings.Join(got, " "), tc.want)
		}
	}
	for _, bad := range []string{`m{l="a}`, `m{l}`, `rate(m[5m`, `{job="a"}`} {
		if _, err := promqlSelectors(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// ---------------------------------------------------------------------------
// docker-compose.yml's monitoring profile

func TestMonitoringProfile(t *testing.T) {
	f := loadCompose(t)
	root := repoRoot(t)
	for _, name := range []string{"prometheus", "grafana"} {
		if s := f.service(t, name); !slices.Contains(s.Profiles, "monitoring") {
			t.Errorf("service %s is not in the monitoring profile (profiles %v): it would start with every `docker compose up`", name, s.Profiles)
		}
	}

	// Prometheus scrapes the ldlm service on its metrics port.
	prom := f.service(t, "prometheus")
	var promConfig string
	for _, a := range prom.command() {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			promConfig = v
		}
	}
	hostConfig, ok := prom.volumes()[promConfig]
	if promConfig == "" || !ok {
		t.Fatalf("prometheus service: command %q does not name a --config.file mounted from the repository (volumes %v)", prom.command(), prom.volumes())
	}
	var pc struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, filepath.Join(root, filepath.FromSlash(hostConfig)), &pc)
	listen := f.service(t, "ldlm").env(t)["LDLM_METRICS_LISTEN"]
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("ldlm service: LDLM_METRICS_LISTEN %q: %v", listen, err)
	}
	want := net.JoinHostPort("ldlm", port)
	scraped := false
	for _, sc := range pc.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			if slices.Contains(st.Targets, want) && (sc.MetricsPath == "" || sc.MetricsPath == "/metrics") {
				scraped = true
			}
		}
	}
	if !scraped {
		t.Errorf("%s does not scrape %s/metrics (the ldlm service's LDLM_METRICS_LISTEN %s)", hostConfig, want, listen)
	}
	if !slices.Contains(prom.dependsOn(), "ldlm") {
		t.Errorf("prometheus service does not depend on ldlm: depends_on %v", prom.dependsOn())
	}

	// Grafana reads Prometheus and the dashboard.
	graf := f.service(t, "grafana")
	mounts := graf.volumes()
	provisioning, ok := mounts["/etc/grafana/provisioning"]
	if !ok {
		t.Fatalf("grafana service: nothing mounted at /etc/grafana/provisioning (volumes %v)", mounts)
	}
	provDir := filepath.Join(root, filepath.FromSlash(provisioning))
	var ds struct {
		Datasources []struct {
			Type, URL string
			IsDefault bool `yaml:"isDefault"`
		}
	}
	readYAML(t, filepath.Join(provDir, "datasources", "prometheus.yml"), &ds)
	if !slices.ContainsFunc(ds.Datasources, func(d struct {
		Type, URL string
		IsDefault bool `yaml:"isDefault"`
	}) bool {
		return d.Type == "prometheus" && d.URL == "http://prometheus:9090" && d.IsDefault
	}) {
		t.Errorf("the provisioned data sources %+v have no default prometheus one at http://prometheus:9090 (the prometheus service)", ds.Datasources)
	}
	var dp struct {
		Providers []struct {
			Type    string
			Options struct{ Path string }
		}
	}
	readYAML(t, filepath.Join(provDir, "dashboards", "ldlm.yml"), &dp)
	found := false
	for _, p := range dp.Providers {
		host, ok := mounts[p.Options.Path]
		if p.Type != "file" || !ok {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(host), path.Base(dashboardPath))); err == nil {
			found = true
		}
	}
	if !found {
		t.Errorf("no dashboard provider reads a directory that is mounted from the one holding %s (providers %+v, volumes %v)", dashboardPath, dp.Providers, mounts)
	}
	if !slices.Contains(graf.dependsOn(), "prometheus") {
		t.Errorf("grafana service does not depend on prometheus: depends_on %v", graf.dependsOn())
	}
	for name, port := range map[string]string{"prometheus": "9090", "grafana": "3000"} {
		s := f.service(t, name)
		if !slices.Contains(s.ports(t), portMapping{published: port, target: port}) {
			t.Errorf("%s service does not publish %s: ports %v", name, port, s.ports(t))
		}
	}
}

func readYAML(t testing.TB, p string, out any) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, out); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
}
