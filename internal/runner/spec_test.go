package runner

import (
	"fmt"
	"reflect"
	"testing"
	"unsafe"

	"github.com/tripswitch/tripswitch/internal/probe"
)

// fillSpec sets every field of a probe.Spec, however deep and exported or not, to a value
// that is not its zero value. Each leaf (a bool, number, string or func) takes its turn as
// leaf number *n; the leaf numbered change gets a different value than in any other call.
func fillSpec(change int) (probe.Spec, int) {
	var s probe.Spec
	n := 0
	fill(reflect.ValueOf(&s).Elem(), &n, change)
	return s, n
}

func fill(v reflect.Value, n *int, change int) {
	if !v.CanSet() {
		v = reflect.NewAt(v.Type(), unsafe.Pointer(v.UnsafeAddr())).Elem() // unexported
	}
	leaf := func() bool {
		*n++
		return *n-1 == change
	}
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(!leaf())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(map[bool]int64{false: 1, true: 2}[leaf()])
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		v.SetUint(map[bool]uint64{false: 1, true: 2}[leaf()])
	case reflect.Float32, reflect.Float64:
		v.SetFloat(map[bool]float64{false: 1, true: 2}[leaf()])
	case reflect.String:
		v.SetString(map[bool]string{false: "a", true: "b"}[leaf()])
	case reflect.Func:
		// Two funcs can only be told apart by identity, which a copy of the spec does not keep.
		leaf()
		v.Set(reflect.MakeFunc(v.Type(), func([]reflect.Value) []reflect.Value { panic("not called") }))
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), n, change)
	case reflect.Struct:
		for i := range v.NumField() {
			fill(v.Field(i), n, change)
		}
	case reflect.Array:
		for i := range v.Len() {
			fill(v.Index(i), n, change)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0), n, change)
	case reflect.Map:
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		var keyLeaves int // a key is not a field: it keeps one value
		fill(k, &keyLeaves, -1)
		fill(e, n, change)
		v.Set(reflect.MakeMap(v.Type()))
		v.SetMapIndex(k, e)
	default:
		panic(fmt.Sprintf("fillSpec cannot fill a %s; teach it, and make sure sameSpec compares it", v.Type()))
	}
}

// TestSameSpecSeesEveryField changes every field of a probe.Spec in turn, including fields
// added after sameSpec was written: sameSpec must tell each change apart, or an edited probe
// would keep running the old question. Two specs built alike must compare equal, or every
// Upsert would replace the prober and drop its kept-alive connections.
func TestSameSpecSeesEveryField(t *testing.T) {
	base, leaves := fillSpec(-1)
	again, _ := fillSpec(-1)
	if !sameSpec(base, again) {
		t.Fatalf("two specs built alike compare different:\n%+v\n%+v", base, again)
	}
	if leaves < 10 {
		t.Fatalf("only %d fields were filled; the walk is broken", leaves)
	}
	for i := range leaves {
		changed, _ := fillSpec(i)
		if sameSpec(base, changed) {
			t.Errorf("a change of field %d of %d is not seen:\n%+v\n%+v", i, leaves, base, changed)
		}
	}
	if sameSpec(probe.Spec{}, probe.Spec{HTTP: &probe.HTTPSpec{}}) || sameSpec(probe.Spec{TCP: true}, probe.Spec{GRPC: &probe.GRPCSpec{}}) {
		t.Error("specs of different kinds compare equal")
	}
}
